"""MiniBench: a procedural, offline benchmark modelled on MMBench (with POPE- and RefCOCO-style
files), drawn with Pillow from a seed so that the same seed regenerates identical bytes.

`generate(out_dir, size, seed)` writes every split and format; `make_item(category, rng)`
draws one item (image, question, options, answer) for demos; `CATEGORIES` lists the
categories with their MMBench L2 group and description.
"""

from tilevl.minibench.categories import CATEGORIES, L2_GROUPS, OPEN_CATEGORIES, make_item
from tilevl.minibench.generate import FORMATS, SPLIT_RATIOS, generate
from tilevl.minibench.items import Item, Obj

__all__ = ["CATEGORIES", "FORMATS", "L2_GROUPS", "OPEN_CATEGORIES", "SPLIT_RATIOS", "Item", "Obj",
           "generate", "make_item"]
