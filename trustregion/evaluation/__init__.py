"""Evaluation during training beyond the objective's held-out metrics: generation-based (``generation``)
and text statistics (``text_metrics``). Held-out preference metrics are ``objectives.evaluate_objective``."""
