"""The paper's three training stages (SYSTEM.md section 7), one module each.

Each module's ``prepare_model(model, config)`` sets what the stage trains; the loop,
data, optimiser and checkpoints are :mod:`midashenglm.training.recipe`'s.
"""
