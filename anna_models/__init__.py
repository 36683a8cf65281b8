"""ANNA's modelling side: marts, point-in-time extraction, encoders, blending, the pipeline steps.

Imports neither ``anna_backend`` nor ``dags``.
"""
