"""Users, passwords and bearer tokens.

Passwords are stored as salted scrypt hashes. Tokens are opaque random strings; only their SHA-256 is
stored (a token has 256 bits of entropy, so a fast hash is enough), with an expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from anna_backend.domain.errors import Conflict, Forbidden, InvalidInput, Unauthenticated
from anna_backend.domain.model import AccessToken, Role, User, utcnow
from anna_backend.service_layer.ports import Backend

log = logging.getLogger(__name__)

# scrypt cost (RFC 7914 N, r, p); each hash records its own, so raising it later keeps old hashes valid.
SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PROD_PASSWORD_LENGTH = 8
ADMIN_USERNAME = "admin"


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(expected))
    return hmac.compare_digest(actual, expected)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A hash to check against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(8))


def create_user(backend: Backend, *, username: str, password: str, role: str, actor: User | None) -> User:
    """A new user; only an admin may create one (``actor`` None: the system, at first start)."""
    if actor is not None and not actor.can_manage_users:
        raise Forbidden("only an admin can create users")
    if not _USERNAME.fullmatch(username):
        raise InvalidInput.field(("body", "username"),
                                 "a username is 1-64 letters, digits or _.@- and starts with a letter "
                                 "or digit")
    try:
        user_role = Role(role)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise InvalidInput.field(("body", "role"), f"role must be one of {roles}; got {role!r}") from None
    min_length = MIN_PROD_PASSWORD_LENGTH if backend.settings.env == "prod" else 1
    if len(password) < min_length:
        raise InvalidInput.field(("body", "password"), f"a password needs at least {min_length} characters")
    with backend.uow() as uow:
        if uow.users.get_by_username(username) is not None:
            raise Conflict(f"user {username!r} already exists")
        user = uow.users.add(User(username=username, role=user_role, password_hash=hash_password(password)))
        uow.commit()
    log.info("user %s created with role %s", username, user_role.value)
    return user


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_at: datetime


def issue_token(backend: Backend, *, username: str, password: str) -> IssuedToken:
    """A new bearer token for valid credentials; else ``Unauthenticated`` (never saying which was wrong)."""
    with backend.uow() as uow:
        user = uow.users.get_by_username(username)
        valid = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not valid or not user.is_active or user.id is None:
            raise Unauthenticated("wrong username or password")
        now = utcnow()
        token = secrets.token_urlsafe(32)
        expires_at = now + timedelta(hours=backend.settings.token_ttl_hours)
        uow.tokens.delete_expired(now)
        uow.tokens.add(AccessToken(token_hash=hash_token(token), user_id=user.id, expires_at=expires_at))
        uow.commit()
    return IssuedToken(access_token=token, expires_at=expires_at)


def authenticate(backend: Backend, token: str) -> User:
    """The user a bearer token belongs to; ``Unauthenticated`` if it is unknown or expired."""
    with backend.uow() as uow:
        stored = uow.tokens.get_by_hash(hash_token(token))
        user = uow.users.get(stored.user_id) if stored and stored.is_valid(utcnow()) else None
    if user is None or not user.is_active:
        raise Unauthenticated("the token is invalid or has expired; log in again")
    return user


def ensure_admin(backend: Backend) -> str | None:
    """On a fresh installation, create the ``admin`` user and write its password to the data dir (mode 600).

    Returns the password file's path when the admin was created now, else None.
    """
    with backend.uow() as uow:
        if uow.users.count():
            return None
    configured = backend.settings.admin_password
    password = configured.get_secret_value() if configured else secrets.token_urlsafe(16)
    try:
        create_user(backend, username=ADMIN_USERNAME, password=password, role=Role.ADMIN.value, actor=None)
    except Conflict:  # another process created it first
        return None
    path = backend.settings.admin_password_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(password + "\n")
    log.warning("created user %r; its password is in %s. Log in with: "
                "anna login --user %s --password-file %s", ADMIN_USERNAME, path, ADMIN_USERNAME, path)
    return str(path)
