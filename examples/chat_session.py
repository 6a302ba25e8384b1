"""A multi-turn conversation that keeps its KV cache and image features (faster than the seeds' loop)."""

import sys

from PIL import Image, ImageDraw

import tilevl

path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-checkpoint"
model = tilevl.load_model(path).eval()
tokenizer = tilevl.load_tokenizer(path)

image = Image.new("RGB", (800, 400), "white")
ImageDraw.Draw(image).rectangle((100, 100, 300, 300), fill="red")

session = tilevl.ChatSession(model, tokenizer, generation=dict(max_new_tokens=24))
print(session.ask("What is in this picture?", images=[image]))
print(session.ask("What colour is the square?"))  # only the new tokens are computed
print(session.stats)
