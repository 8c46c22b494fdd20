"""The model's audio geometry: how many audio tokens a clip of ``n`` samples becomes.

The count follows from the encoder (hop length, patch stride) and the projector
(subsample factor); the processor uses it to expand ``<|AUDIO|>`` placeholders and
the model uses it to cut each clip's embeddings, so both must agree: this module is
the one place it is computed. It imports nothing (cheap for cost models and tools).
"""

from __future__ import annotations

# Clips shorter than 0.2 s are zero-padded to this many samples, as the published processor does.
MIN_AUDIO_SAMPLES = 3200


def num_audio_tokens(
    num_samples: int,
    *,
    hop_length: int = 160,
    patch_stride: int = 4,
    subsample_factor: int = 5,
    min_samples: int = MIN_AUDIO_SAMPLES,
) -> int:
    """Audio tokens for a clip of ``num_samples`` samples: ``(1 + n // 160) // 4 // 5``, >= 1.

    10 s -> 50 tokens, 30 s -> 150 tokens. Clips shorter than ``min_samples`` are
    padded to it first.
    """
    num_samples = max(int(num_samples), min_samples)
    return max(1, (1 + num_samples // hop_length) // patch_stride // subsample_factor)
