/* A GRU's recurrence, fused: what PyTorch's CPU GRU does in about ten passes over memory a step, and a
 * call from Python a step, here in one call per block of rows.
 *
 * PyTorch's GRU (its formulas, its gate order r, z, n):
 *   r = sigmoid(gi_r + gh_r)        gi = x W_ih^T + b_ih, precomputed for every step (training)
 *   z = sigmoid(gi_z + gh_z)        gh = h_prev W_hh^T + b_hh, computed here (`product`)
 *   n = tanh(gi_n + r * gh_n)
 *   h = (1 - z) * n + z * h_prev
 * Each row's gates are laid out as [r | z | n], `hidden` wide each. anna_gru_forward_seq and
 * anna_gru_backward_seq train (the caller, anna_models/fused_gru.py, makes gi and W_hh's gradient with
 * torch); anna_gru_score scores, making gi itself from lookup tables. Built with -O3 -ffast-math: the loops
 * over a row vectorise, which is why exp is written out below (a call to expf would not).
 */
#include <stdint.h>

/* exp(x) for float32, relative error below 1e-7 over [-80, 80]: x = k ln2 + r with |r| <= ln2 / 2,
 * a degree-7 Taylor-like polynomial for exp(r), and 2^k put straight into the exponent bits. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f; /* ln2 in two parts, so r keeps its low bits */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)k + 127) << 23;
    return p * scale.f;
}

/* The product's block: QUAD rows × TILE vectors of 8 columns, 12 accumulators in registers. Of 4×2, 4×3,
 * 6×2, 6×3 and 8×1..3, 6×2 ran fastest on an AMD EPYC with AVX2 (hidden 64). Vector types are GCC's and
 * Clang's own: without AVX they become pairs of SSE registers. */
#define QUAD 6
#define TILE 2
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec8u __attribute__((vector_size(32), aligned(4)));

/* out[r] = start[r] + in[r] M for QUAD rows; in[r] is `depth` wide, M (depth, width) row-major. A block of
 * fewer rows repeats one (its results are written twice, the same). */
static void product(int64_t depth, int64_t width, const float *const in[QUAD], const float *restrict m,
                    const float *const start[QUAD], float *const out[QUAD]) {
    const int64_t vectors = width / (8 * TILE) * (8 * TILE);
    for (int64_t c = 0; c < vectors; c += 8 * TILE) {
        vec8 acc[QUAD][TILE];
        for (int r = 0; r < QUAD; r++)
            for (int v = 0; v < TILE; v++) acc[r][v] = *(const vec8u *)(start[r] + c + 8 * v);
        for (int64_t k = 0; k < depth; k++) {
            vec8 w[TILE];
            for (int v = 0; v < TILE; v++) w[v] = *(const vec8u *)(m + k * width + c + 8 * v);
            for (int r = 0; r < QUAD; r++) {
                const float x = in[r][k];
                for (int v = 0; v < TILE; v++) acc[r][v] += x * w[v];
            }
        }
        for (int r = 0; r < QUAD; r++)
            for (int v = 0; v < TILE; v++) *(vec8u *)(out[r] + c + 8 * v) = acc[r][v];
    }
    for (int64_t c = vectors; c < width; c++) {
        for (int r = 0; r < QUAD; r++) {
            float acc = start[r][c];
            for (int64_t k = 0; k < depth; k++) acc += in[r][k] * m[k * width + c];
            out[r][c] = acc;
        }
    }
}

/* Row j of a row's gates r, z and n, from its input gates gi and hidden gates gh ([r | z | n] each). */
static inline void gates(int64_t hidden, int64_t j, const float *restrict gi, const float *restrict gh,
                         float *r, float *z, float *n) {
    *r = 1.0f / (1.0f + exp_approx(-(gi[j] + gh[j])));
    *z = 1.0f / (1.0f + exp_approx(-(gi[hidden + j] + gh[hidden + j])));
    *n = 2.0f / (1.0f + exp_approx(-2.0f * (gi[2 * hidden + j] + *r * gh[2 * hidden + j]))) - 1.0f;
}

/* Forward of one row at one step: its new state h and, for the backward pass, saved = [r | z | n]. */
static void step_forward(int64_t hidden, const float *restrict gi, const float *restrict gh,
                         const float *restrict h_prev, float *restrict h, float *restrict saved) {
    for (int64_t j = 0; j < hidden; j++) {
        float r, z, n;
        gates(hidden, j, gi, gh, &r, &z, &n);
        h[j] = n + z * (h_prev[j] - n);
        saved[j] = r;
        saved[hidden + j] = z;
        saved[2 * hidden + j] = n;
    }
}

/* Backward of one row at one step. The gradient reaching h is d_out (from the step's outputs) + d_next
 * (through the next step). Writes the gradients of the gate inputs: d_gi (of gi, also b_ih's), d_gh (of gh,
 * also b_hh's and the product h_prev W_hh^T), and d_direct = the part of h_prev's gradient that skips W_hh
 * (dh * z); the caller adds d_gh W_hh to it. */
static void step_backward(int64_t hidden, const float *restrict d_out, const float *restrict d_next,
                          const float *restrict saved, const float *restrict gh, const float *restrict h_prev,
                          float *restrict d_gi, float *restrict d_gh, float *restrict d_direct) {
    for (int64_t j = 0; j < hidden; j++) {
        float r = saved[j], z = saved[hidden + j], n = saved[2 * hidden + j];
        float dh = d_out[j] + d_next[j];
        float dn = dh * (1.0f - z) * (1.0f - n * n);
        float dz = dh * (h_prev[j] - n) * z * (1.0f - z);
        float dr = dn * gh[2 * hidden + j] * r * (1.0f - r);
        d_gi[j] = dr;
        d_gi[hidden + j] = dz;
        d_gi[2 * hidden + j] = dn;
        d_gh[j] = dr;
        d_gh[hidden + j] = dz;
        d_gh[2 * hidden + j] = dn * r;
        d_direct[j] = dh * z;
    }
}

/* Training: a block of rows' whole forward pass in one call. gates_in (steps, row_stride, 3 hidden) holds
 * x W_ih^T + b_ih; out (steps, row_stride, hidden) gets the states; w_hh_t is W_hh^T (hidden, 3 hidden).
 * With keep, gates_h and saved (steps, row_stride, 3 hidden) keep every step's h W_hh^T + b_hh and
 * [r | z | n] for the backward pass; without, they are one step deep and reused. The pointers start at
 * the block's first row: rows of a wider batch, row_stride apart from one step to the next. */
void anna_gru_forward_seq(int64_t steps, int64_t rows, int64_t hidden, int64_t row_stride, int64_t keep,
                          const float *restrict gates_in, const float *restrict w_hh_t,
                          const float *restrict b_hh, float *restrict out, float *restrict gates_h,
                          float *restrict saved) {
    const int64_t width = 3 * hidden;
    float *zeros = __builtin_alloca(hidden * sizeof(float));
    for (int64_t j = 0; j < hidden; j++) zeros[j] = 0.0f;
    const float *h_prev[QUAD], *start[QUAD];
    float *gh[QUAD];
    for (int r = 0; r < QUAD; r++) start[r] = b_hh;
    for (int64_t t = 0; t < steps; t++) {
        const int64_t at = t * row_stride, kept = keep ? at : 0;
        for (int64_t b = 0; b < rows; b += QUAD) {
            const int n = rows - b < QUAD ? (int)(rows - b) : QUAD;
            for (int r = 0; r < QUAD; r++) {
                const int64_t row = b + (r < n ? r : 0);
                h_prev[r] = t ? out + (at - row_stride + row) * hidden : zeros;
                gh[r] = gates_h + (kept + row) * width;
            }
            product(hidden, width, h_prev, w_hh_t, start, gh);
            for (int r = 0; r < n; r++)
                step_forward(hidden, gates_in + (at + b + r) * width, gh[r], h_prev[r],
                                 out + (at + b + r) * hidden, saved + (kept + b + r) * width);
        }
    }
}

/* Training: a block of rows' whole backward pass in one call, from the forward's kept gates_h and saved
 * and its states out; d_out is the loss's gradient of out. Writes d_gi and d_gh (steps, row_stride,
 * 3 hidden), the gradients of the input gates and of h W_hh^T + b_hh at every step; the caller gets the
 * weights' gradients from them in one product each. w_hh is W_hh (3 hidden, hidden); d_next (rows,
 * hidden) is scratch for the gradient reaching h from the step after. */
void anna_gru_backward_seq(int64_t steps, int64_t rows, int64_t hidden, int64_t row_stride,
                           const float *restrict d_out, const float *restrict out,
                           const float *restrict gates_h, const float *restrict saved,
                           const float *restrict w_hh, float *restrict d_gi, float *restrict d_gh,
                           float *restrict d_next) {
    const int64_t width = 3 * hidden;
    /* h_prev at step 0 (zeros), then one row of d_direct (dh * z) for each row of a block */
    float *zeros = __builtin_alloca((QUAD + 1) * hidden * sizeof(float));
    for (int64_t j = 0; j < hidden; j++) zeros[j] = 0.0f;
    for (int64_t i = 0; i < rows * hidden; i++) d_next[i] = 0.0f;
    const float *d_gh_rows[QUAD], *direct_rows[QUAD];
    float *next_rows[QUAD], *direct[QUAD];
    for (int r = 0; r < QUAD; r++) direct_rows[r] = direct[r] = zeros + (r + 1) * hidden;
    for (int64_t t = steps - 1; t >= 0; t--) {
        const int64_t at = t * row_stride;
        for (int64_t b = 0; b < rows; b += QUAD) {
            const int n = rows - b < QUAD ? (int)(rows - b) : QUAD;
            for (int r = 0; r < n; r++) {
                const int64_t i = at + b + r;
                step_backward(hidden, d_out + i * hidden, d_next + (b + r) * hidden, saved + i * width,
                                  gates_h + i * width, t ? out + (i - row_stride) * hidden : zeros,
                                  d_gi + i * width, d_gh + i * width, direct[r]);
            }
            for (int r = 0; r < QUAD; r++) {
                const int row = r < n ? r : 0;
                d_gh_rows[r] = d_gh + (at + b + row) * width;
                direct_rows[r] = direct[row];
                next_rows[r] = d_next + (b + row) * hidden;
            }
            product(width, hidden, d_gh_rows, w_hh, direct_rows, next_rows);
        }
    }
}

/* Scoring: the whole recurrence of a block of rows in one call, pooling as it goes. Row b runs its
 * steps 0 .. lengths[b] - 1; neither the gates nor the per-step states are stored.
 * A row's input gates at step t are made here, from three parts (bias may be NULL, codes and x 0 wide):
 *   gi = bias + sum over f of tables[codes[t, b, f]] + x[t, b] W_x
 * tables (vocab, 3 hidden) are embeddings already multiplied by their columns of W_ih, codes index their
 * rows, and x (n_x wide) are the features that have no table, with W_x (n_x, 3 hidden) their columns.
 * codes and x are time-major: step t of row b is at (t * row_stride + b) * width, so a block of rows can
 * be a slice of a wider batch. gh = h W_hh^T + b_hh is computed here too (w_hh_t is W_hh^T, (hidden,
 * 3 hidden)), for QUAD rows at a time (each weight loaded once for all of them), and only for rows still
 * inside their history: with no call back to Python per step, short rows are not held up by long ones.
 * h (rows, hidden) starts at zero; sum and peak accumulate the states; last is the state after a row's
 * last event. Rows without events get zeros. */
/* gi = bias + sum over f of tables[codes[f]] + x W_x, for one row at one step: 32 columns at a time,
 * held in registers until every part is added. */
static __attribute__((noinline)) void input_gates(int64_t width, const float *restrict bias, int64_t n_codes,
                                                  const int64_t *restrict codes, const float *restrict tables,
                                                  int64_t n_x, const float *restrict x,
                                                  const float *restrict w_x, float *restrict gi) {
    const int64_t vectors = width / 32 * 32;
    for (int64_t c = 0; c < vectors; c += 32) {
        vec8 acc[4];
        for (int v = 0; v < 4; v++) acc[v] = bias ? *(const vec8u *)(bias + c + 8 * v) : (vec8){0};
        for (int64_t f = 0; f < n_codes; f++) {
            const float *restrict table = tables + codes[f] * width + c;
            for (int v = 0; v < 4; v++) acc[v] += *(const vec8u *)(table + 8 * v);
        }
        for (int64_t k = 0; k < n_x; k++) {
            const float xk = x[k], *restrict w = w_x + k * width + c;
            for (int v = 0; v < 4; v++) acc[v] += xk * *(const vec8u *)(w + 8 * v);
        }
        for (int v = 0; v < 4; v++) *(vec8u *)(gi + c + 8 * v) = acc[v];
    }
    for (int64_t c = vectors; c < width; c++) {
        float acc = bias ? bias[c] : 0.0f;
        for (int64_t f = 0; f < n_codes; f++) acc += tables[codes[f] * width + c];
        for (int64_t k = 0; k < n_x; k++) acc += x[k] * w_x[k * width + c];
        gi[c] = acc;
    }
}

/* One row's new state from its gates, added to its sum and its running maximum (set at t = 0). */
static __attribute__((noinline)) void update(int64_t hidden, int64_t t, const float *restrict gi,
                                             const float *restrict gh, float *restrict h, float *restrict sum,
                                             float *restrict peak) {
    for (int64_t j = 0; j < hidden; j++) {
        float r, z, n;
        gates(hidden, j, gi, gh, &r, &z, &n);
        float v = n + z * (h[j] - n);
        h[j] = v;
        sum[j] += v;
        peak[j] = t == 0 || v > peak[j] ? v : peak[j];
    }
}

void anna_gru_score(int64_t rows, int64_t hidden, int64_t row_stride, const int64_t *restrict lengths,
                    const float *restrict bias, int64_t n_codes, const int64_t *restrict codes,
                    const float *restrict tables, int64_t n_x, const float *restrict x,
                    const float *restrict w_x, const float *restrict w_hh_t, const float *restrict b_hh,
                    float *restrict h, float *restrict sum, float *restrict peak, float *restrict last) {
    const int64_t width = 3 * hidden;
    int64_t steps = 0;
    for (int64_t b = 0; b < rows; b++) steps = lengths[b] > steps ? lengths[b] : steps;
    for (int64_t i = 0; i < rows * hidden; i++) h[i] = sum[i] = peak[i] = last[i] = 0.0f;
    float *gi = __builtin_alloca((QUAD + 1) * width * sizeof(float));
    const float *h_in[QUAD], *start[QUAD];
    float *gh[QUAD];
    for (int r = 0; r < QUAD; r++) {
        gh[r] = gi + (r + 1) * width;
        start[r] = b_hh;
    }
    int64_t active[QUAD];
    for (int64_t t = 0; t < steps; t++) {
        for (int64_t b = 0; b < rows;) {
            int n = 0;
            for (; b < rows && n < QUAD; b++)
                if (t < lengths[b]) active[n++] = b;
            if (n == 0) break;
            for (int r = 0; r < QUAD; r++) h_in[r] = h + active[r < n ? r : 0] * hidden;
            product(hidden, width, h_in, w_hh_t, start, gh);
            for (int r = 0; r < n; r++) {
                const int64_t row = active[r], at = t * row_stride + row;
                input_gates(width, bias, n_codes, codes + at * n_codes, tables, n_x, x + at * n_x, w_x, gi);
                update(hidden, t, gi, gh[r], h + row * hidden, sum + row * hidden, peak + row * hidden);
                if (t == lengths[row] - 1)
                    for (int64_t j = 0; j < hidden; j++) last[row * hidden + j] = h[row * hidden + j];
            }
        }
    }
}
