"""Ask a MiDashengLM checkpoint about a clip.

    python examples/quickstart.py --model out/tiny-model --audio clip.wav \
        --question "Write an audio caption describing the sound"

Without --audio it speaks a sentence with espeak-ng (or, if that is missing,
makes a two-tone clip) so the example runs anywhere. A randomly initialised
model (``midashenglm init``) answers with random tokens: that shows the
pipeline, not the quality.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from midashenglm import MiDashengLM, MiDashengLMProcessor, load_audio


def demo_clip() -> str | np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe:
        path = Path(tempfile.mkdtemp()) / "speech.wav"
        subprocess.run([exe, "-w", str(path), "The quick brown fox jumps over the lazy dog."], check=True)
        return str(path)
    t = np.arange(3 * 16000) / 16000
    return (0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--audio", help="audio file (wav, flac, mp3, m4a, ...)")
    parser.add_argument("--question", default="Write an audio caption describing the sound")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", default="auto", help="auto (first GPU, else the CPU), cpu, cuda, cuda:N, mps")
    args = parser.parse_args()

    processor = MiDashengLMProcessor.from_pretrained(args.model)
    model = MiDashengLM.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    audio = args.audio or demo_clip()
    wave = load_audio(audio)
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": wave, "sampling_rate": 16000},  # load_audio gives 16 kHz
        {"type": "text", "text": args.question},
    ]}]
    batch = processor.apply_chat_template(conversation, tokenize=True).to(model.device)
    start = time.perf_counter()
    tokens = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    print(f"audio: {audio if isinstance(audio, str) else 'generated tones'} "
          f"({len(wave) / 16000:.2f} s -> {processor.num_audio_tokens(len(wave))} audio tokens)")
    print(f"question: {args.question}")
    print(f"answer: {processor.batch_decode(tokens)[0]!r}")
    print(f"{tokens.shape[1]} tokens in {seconds:.2f} s on {model.device}")


if __name__ == "__main__":
    main()
