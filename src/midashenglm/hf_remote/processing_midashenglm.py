# midashenglm-remote-code: processing_midashenglm.py, written by the midashenglm package.
# (This first line marks the file as the package's own: saving a checkpoint replaces it with
# the package's current version, while a checkpoint's own remote code is kept as it is.)
"""MiDashengLM's processor for ``AutoProcessor.from_pretrained(folder, trust_remote_code=True)``.

Every checkpoint the midashenglm package saves carries this file, with ``auto_map``
entries in ``processor_config.json``, ``preprocessor_config.json`` and
``tokenizer_config.json`` pointing at :class:`MiDashengLMProcessor`, so that tools that load
processors through transformers (vLLM's ``MiDashengLMModel`` among them) can serve it.

It depends on numpy, torch and transformers only: the midashenglm package is not needed
where this runs. It does what vLLM asks of a MiDashengLM processor:

* ``audio_token``, ``audio_bos_token`` and ``audio_eos_token`` attributes, and a
  ``feature_extractor`` (transformers' ``Wav2Vec2FeatureExtractor``) with ``sampling_rate``;
* ``processor(text=..., audio=[...], return_tensors="pt")`` returns ``input_ids`` and
  ``attention_mask`` with each ``<|AUDIO|>`` expanded to one token per audio frame (wrapped
  in ``<|audio_bos|>``/``<|audio_eos|>`` unless the text wraps it already), ``input_values``
  (float32 waveforms, zero-padded on the right to the longest clip) and ``audio_length``
  (samples per clip). Clips shorter than ``min_audio_samples`` (3200, 0.2 s) are
  zero-padded to it first, as the model expects.

Audio is given as 1-D float arrays or tensors at the feature extractor's rate (16 kHz);
this file does not decode files or resample.
"""

import numpy as np
import torch
import transformers
from transformers import PretrainedConfig
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS_TOKEN = "<|audio_bos|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"
MIN_AUDIO_SAMPLES = 3200


def num_audio_tokens(
    num_samples: int,
    hop_length: int = 160,
    patch_stride: int = 4,
    subsample_factor: int = 5,
    min_samples: int = MIN_AUDIO_SAMPLES,
) -> int:
    """Audio tokens for a clip of ``num_samples`` samples: ``(1 + n // 160) // 4 // 5``, >= 1.

    A copy of ``midashenglm.modeling.geometry.num_audio_tokens``, which is the source of
    truth: this file must run without the midashenglm package, so it carries its own copy,
    and the package's tests check that both agree. vLLM's ``calculate_mel_frames_dasheng``
    gives the same count.
    """
    num_samples = max(int(num_samples), min_samples)
    return max(1, (1 + num_samples // hop_length) // patch_stride // subsample_factor)


class MiDashengLMProcessorKwargs(ProcessingKwargs, total=False):
    _defaults = {
        "text_kwargs": {
            "padding": True,
            "padding_side": "left",
            "add_special_tokens": False,  # the chat template writes every special token
        },
        "audio_kwargs": {},
    }


class MiDashengLMProcessor(ProcessorMixin):
    """Wav2Vec2FeatureExtractor (padding only) + the tokenizer, with MiDashengLM's audio tokens."""

    valid_processor_kwargs = MiDashengLMProcessorKwargs
    if int(transformers.__version__.split(".")[0]) < 5:  # transformers 4.x names the parts here
        attributes = ["feature_extractor", "tokenizer"]
        feature_extractor_class = "Wav2Vec2FeatureExtractor"
        tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template=None,
        audio_token=None,
        audio_bos_token=None,
        audio_eos_token=None,
        hop_length: int = 160,
        patch_stride: int = 4,
        subsample_factor: int = 5,
        min_audio_samples: int = MIN_AUDIO_SAMPLES,
    ):
        if getattr(feature_extractor, "do_normalize", False):
            raise ValueError("MiDashengLM takes raw waveforms: the feature extractor must have "
                             "do_normalize=False")
        self.audio_token = audio_token or getattr(tokenizer, "audio_token", None) or AUDIO_TOKEN
        self.audio_bos_token = (audio_bos_token or getattr(tokenizer, "audio_bos_token", None)
                                or AUDIO_BOS_TOKEN)
        self.audio_eos_token = (audio_eos_token or getattr(tokenizer, "audio_eos_token", None)
                                or AUDIO_EOS_TOKEN)
        vocab = tokenizer.get_vocab()
        missing = [t for t in (self.audio_token, self.audio_bos_token, self.audio_eos_token)
                   if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the audio special tokens {missing}")
        self.audio_token_id = vocab[self.audio_token]
        self.hop_length = int(hop_length)
        self.patch_stride = int(patch_stride)
        self.subsample_factor = int(subsample_factor)
        self.min_audio_samples = int(min_audio_samples)
        self.sampling_rate = feature_extractor.sampling_rate
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path,
                                        subfolder="", **kwargs):
        # config.json describes the model (model_type "midashenglm", which transformers does
        # not know): handed no config, AutoTokenizer would parse it and warn. The tokenizer's
        # own files name its class. (transformers 5.x calls this; 4.x never does.)
        kwargs.setdefault("config", PretrainedConfig())
        return super()._load_tokenizer_from_pretrained(
            sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )

    def num_audio_tokens(self, num_samples: int) -> int:
        return num_audio_tokens(num_samples, self.hop_length, self.patch_stride,
                                self.subsample_factor, self.min_audio_samples)

    def __call__(self, text=None, audio=None, **kwargs: Unpack[MiDashengLMProcessorKwargs]
                 ) -> BatchFeature:
        """Tokenize ``text`` (a string or a list) with one ``<|AUDIO|>`` per clip of ``audio``
        (clips are taken in order over the whole batch), and pad the clips."""
        if text is None and audio is None:
            raise ValueError("pass `text` (with one <|AUDIO|> per clip) and/or `audio`")
        for name in ("images", "videos"):
            if kwargs.pop(name, None) is not None:
                raise ValueError("MiDashengLM takes audio and text only")
        # The processor's defaults (left padding) win over the tokenizer's saved settings,
        # as in the midashenglm package's processor.
        output_kwargs = self._merge_kwargs(MiDashengLMProcessorKwargs, tokenizer_init_kwargs={},
                                           **kwargs)
        text_kwargs = dict(output_kwargs["text_kwargs"])
        audio_kwargs = dict(output_kwargs["audio_kwargs"])
        return_tensors = text_kwargs.pop("return_tensors", None)
        return_tensors = audio_kwargs.pop("return_tensors", None) or return_tensors or "pt"

        data = {}
        lengths = []
        if audio is not None:
            rate = audio_kwargs.get("sampling_rate")
            if rate is not None and rate != self.sampling_rate:
                raise ValueError(f"audio at {rate} Hz: MiDashengLM takes {self.sampling_rate} Hz "
                                 "(resample it first)")
            clips = [self._clip(sample, i) for i, sample in enumerate(self._clip_list(audio))]
            lengths = [len(c) for c in clips]
            padded = self.feature_extractor(
                clips, sampling_rate=self.sampling_rate, padding=True,
                return_attention_mask=False, return_tensors="np",
            )
            data["input_values"] = np.asarray(padded["input_values"], dtype=np.float32)
            data["audio_length"] = np.asarray(lengths, dtype=np.int64)

        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("text must be a string or a list of strings")
            found = sum(t.count(self.audio_token) for t in texts)
            if found != len(lengths):
                raise ValueError(f"the text holds {found} {self.audio_token} placeholder(s) but "
                                 f"{len(lengths)} audio clip(s) were given")
            counts = iter([self.num_audio_tokens(n) for n in lengths])
            texts = [self._expand(t, counts) for t in texts]
            encoded = self.tokenizer(texts, **text_kwargs)
            data = {**dict(encoded), **data}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _expand(self, text: str, counts) -> str:
        """Each placeholder becomes its clip's tokens, wrapped in bos/eos unless already."""
        pieces = text.split(self.audio_token)
        out = pieces[0]
        for rest in pieces[1:]:
            tokens = self.audio_token * next(counts)
            if not (out.endswith(self.audio_bos_token) or rest.startswith(self.audio_eos_token)):
                tokens = self.audio_bos_token + tokens + self.audio_eos_token
            out += tokens + rest
        return out

    @staticmethod
    def _clip_list(audio) -> list:
        if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 1:
            return [audio]
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            raise ValueError("audio: give one 1-D waveform or a list of them")
        return list(audio)

    def _clip(self, sample, index: int) -> np.ndarray:
        if isinstance(sample, torch.Tensor):
            sample = sample.detach().cpu()
            sample = (sample.float() if sample.is_floating_point() else sample).numpy()
        sample = np.asarray(sample)
        if sample.ndim != 1:
            raise ValueError(f"audio[{index}]: expected a 1-D (mono) waveform, got shape "
                             f"{tuple(sample.shape)}")
        if not np.issubdtype(sample.dtype, np.floating):
            raise TypeError(f"audio[{index}]: expected float samples in [-1, 1], got "
                            f"{sample.dtype}")
        sample = sample.astype(np.float32, copy=False)
        if len(sample) == 0:
            raise ValueError(f"audio[{index}]: no samples (an empty clip)")
        if not np.isfinite(sample).all():
            raise ValueError(f"audio[{index}]: {int((~np.isfinite(sample)).sum())} of "
                             f"{len(sample)} samples are NaN or infinite")
        if len(sample) < self.min_audio_samples:
            sample = np.pad(sample, (0, self.min_audio_samples - len(sample)))
        return sample

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "input_values", "audio_length"]


__all__ = ["MiDashengLMProcessor", "num_audio_tokens"]
