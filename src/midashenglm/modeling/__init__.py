"""Model code: config, front end, encoder, projector and the full model."""
