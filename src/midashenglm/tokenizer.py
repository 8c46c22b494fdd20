"""A small byte-level BPE tokenizer with Qwen's special tokens, built offline.

Real checkpoints ship Qwen tokenizers (loaded with ``AutoTokenizer``). Tests, tiny
models and ``midashenglm init --decoder tiny`` use this one: same special tokens,
same ChatML template, a vocabulary small enough for a tiny decoder.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from midashenglm.processing import (
    AUDIO_BOS_TOKEN,
    AUDIO_EOS_TOKEN,
    AUDIO_TOKEN,
    CHAT_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    SPECIAL_TOKENS,
)

# Enough text for a few hundred merges of the words the paper's prompts and
# typical captions use.
_CORPUS = """
Transcribe the speech into text. Write an audio caption describing the sound.
Caption this music track. What gender is the speaker? Which labels describe the sound?
What's the music instrument? Answer with a single letter. Answer with 1-2 sentences.
A man is speaking while music plays in the background. A woman sings a slow song.
A dog barks, birds chirp and a car passes by on a wet road. Rain falls on a roof.
The recording is noisy, with reverberation, in a large hall. Applause and cheering.
You are a helpful language and speech assistant. The speaker sounds happy and calm.
Male speech, female speech, child speech, guitar, piano, drums, violin, bass, synthesizer.
hello world, the quick brown fox jumps over the lazy dog 0123456789.
"""


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on a built-in corpus; specials get the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={
            "audio_token": AUDIO_TOKEN,
            "audio_bos_token": AUDIO_BOS_TOKEN,
            "audio_eos_token": AUDIO_EOS_TOKEN,
        },
    )


def save_tiny_tokenizer(directory: str | Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tokenizer = build_tiny_tokenizer(vocab_size)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
