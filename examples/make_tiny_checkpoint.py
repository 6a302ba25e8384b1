"""Write a tiny random InternVL checkpoint (official layout + tokenizer) for the examples.

Real checkpoints cannot be downloaded here; the examples run unchanged on a real one.
Usage: python examples/make_tiny_checkpoint.py [OUT_DIR]   (default runs/tiny-checkpoint)
"""

import sys

import tilevl
from tilevl.checkpoint.tokenizer import build_bpe_tokenizer, img_context_token_id

out = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-checkpoint"
tokenizer = build_bpe_tokenizer(vocab_size=400)
model = tilevl.build_model("tiny", seed=0)
model.img_context_token_id = img_context_token_id(tokenizer)
tilevl.save_model(model, out, tokenizer=tokenizer, overwrite=True)
print(f"wrote {out}")
