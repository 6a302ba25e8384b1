"""Named presets of the published InternVL checkpoints, each as its official config.json dict.
The parameter count each preset is checked against lives in `tilevl.param_count` (no torch).

Every preset keeps the keys that shape the network or the input pipeline, spelled exactly as
the checkpoint's ``config.json`` spells them (``InternVLChatConfig`` layout: top level,
``vision_config`` for InternViT, ``llm_config`` for the LLM's own config).  Keys that only
matter to the original training code (``use_backbone_lora``, dropout rates, ``auto_map`` …)
are left out.  Next to each preset a comment names where its numbers come from:

* "verified": the field values were read from a copy of that checkpoint's config.json found
  in public material (the copy is named).
* "per published base": the InternVL file was not reachable; the LLM block is the base LLM's
  published config.json with InternVL's usual changes (vocab grown by the 9 InternVL special
  tokens ``<img> </img> <IMG_CONTEXT> <quad> </quad> <ref> </ref> <box> </box>``, untied head),
  and the vision block is the named InternViT's config.  PUBLISHED_PARAMS is the cross-check:
  a wrong layer count or width would miss the published size by far more than 1 %.
"""

from __future__ import annotations

import copy

from tilevl.errors import ConfigError
from tilevl.preset_blocks import (
    chat,
    gpt_oss_20b,
    internlm2,
    internlm3_8b,
    phi3_mini_128k,
    qwen2,
    qwen25,
    qwen3,
    qwen3_moe,
    vit_300m,
    vit_6b,
    yi34b_hermes,
)

# ---------------------------------------------------------------------------------------------
# The presets.
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    # OpenGVLab/InternVL-Chat-V1-2: InternViT-6B-448px-V1-2 + Nous-Hermes-2-Yi-34B.
    # Verified from the head of its config.json (HF blame page @86fa89e): downsample_ratio 0.5,
    # "dynamic_image_size": false, force_image_size 448, LlamaForCausalLM 7168/20480, 4096 pos.
    # ps_version "v1" and template "Hermes-2" per the model card / InternVL repo (V1-2 predates
    # pixel-shuffle v2 and tiling); use_thumbnail/max_dynamic_patch are the InternVLChatConfig
    # defaults (False / 6) since dynamic tiling is off.
    "internvl-chat-v1-2": chat(vit_6b(), yi34b_hermes(), template="Hermes-2",
                               ps_version="v1", dynamic=False, max_patch=6),
    # OpenGVLab/InternVL-Chat-V1-2-Plus: same architecture as V1-2, more SFT data (model card).
    "internvl-chat-v1-2-plus": chat(vit_6b(), yi34b_hermes(), template="Hermes-2",
                                    ps_version="v1", dynamic=False, max_patch=6),
    # OpenGVLab/InternVL-Chat-V1-5: InternViT-6B-448px-V1-5 + internlm2-chat-20b; dynamic
    # tiling up to 12 tiles + thumbnail, pixel shuffle v2 (InternVL 1.5 report, model card;
    # the head of the Int8 copy wyseow/InternVL-Chat-V1-5-Int8-OL confirms dynamic/448/0.5).
    # LLM shape as internlm2-chat-20b (verified in the InternVL2-26B config.json copy);
    # rope_scaling factor 2.0 for V1-5 as the brief and the V1-5 file recall say (InternVL2-26B,
    # same base LLM, carries 3.0) — not read from the V1-5 file.
    "internvl-chat-v1-5": chat(
        vit_6b(),
        internlm2("internlm/internlm2-chat-20b", hidden=6144, inter=16384, layers=48,
                  heads=48, kv_heads=8, rope_factor=2.0),
        template="internlm2-chat"),
    # OpenGVLab/Mini-InternVL-Chat-2B-V1-5: InternViT-300M-448px + internlm2-chat-1_8b.
    # LLM shape: internlm2-chat-1_8b (2048/8192, 24 layers, 16/8 heads, rope 1e6 dynamic 2.0 —
    # from the bert4torch internlm2-chat-1_8b config and the Triton-InternVL2-2B config head).
    "mini-internvl-chat-2b-v1-5": chat(
        vit_300m(),
        internlm2("internlm/internlm2-chat-1_8b", hidden=2048, inter=8192, layers=24,
                  heads=16, kv_heads=8, rope_factor=2.0),
        template="internlm2-chat"),
    # OpenGVLab/Mini-InternVL-Chat-4B-V1-5: InternViT-300M-448px + Phi-3-mini-128k-instruct.
    "mini-internvl-chat-4b-v1-5": chat(vit_300m(), phi3_mini_128k(), template="phi3-chat"),
    # OpenGVLab/InternVL2-1B: verified field by field against its config.json (copy in
    # github.com/tothelast/simlingo_qcar2_integration pretrained/InternVL2-1B/config.json):
    # Qwen2-0.5B-Instruct 896/4864, 24 layers, 14/2 heads, vocab 151655, untied, template
    # "Hermes-2", ps v2, dynamic 1..12 + thumbnail.
    "internvl2-1b": chat(
        vit_300m(),
        qwen2("Qwen/Qwen2-0.5B-Instruct", hidden=896, inter=4864, layers=24, heads=14,
              kv_heads=2, vocab=151655),
        template="Hermes-2"),
    # OpenGVLab/InternVL2-2B: InternViT-300M-448px + internlm2-chat-1_8b (model card); llm
    # block head verified in radna/Triton-InternVL2-2B/config.json (a re-upload of InternVL2-2B).
    "internvl2-2b": chat(
        vit_300m(),
        internlm2("internlm/internlm2-chat-1_8b", hidden=2048, inter=8192, layers=24,
                  heads=16, kv_heads=8, rope_factor=2.0),
        template="internlm2-chat"),
    # OpenGVLab/InternVL2-4B: InternViT-300M-448px + Phi-3-mini-128k-instruct (model card).
    "internvl2-4b": chat(vit_300m(), phi3_mini_128k(), template="phi3-chat"),
    # OpenGVLab/InternVL2-8B: verified against a full copy of its config.json (valora
    # model_config.py): internlm2_5-7b-chat 4096/14336, 32 layers, 32/8 heads, vocab 92553,
    # rope 1e6 dynamic 2.0; InternViT-300M; template internlm2-chat; dynamic 1..12.
    "internvl2-8b": chat(
        vit_300m(),
        internlm2("internlm/internlm2_5-7b-chat", hidden=4096, inter=14336, layers=32,
                  heads=32, kv_heads=8, rope_factor=2.0),
        template="internlm2-chat"),
    # OpenGVLab/InternVL2-26B: verified against a full copy of its config.json (valora
    # model_config.py): InternViT-6B-448px-V1-5 (45 layers) + internlm2-chat-20b with
    # dynamic rope factor 3.0.
    "internvl2-26b": chat(
        vit_6b(),
        internlm2("internlm/internlm2-chat-20b", hidden=6144, inter=16384, layers=48,
                  heads=48, kv_heads=8, rope_factor=3.0),
        template="internlm2-chat"),
    # OpenGVLab/InternVL2-40B: InternViT-6B-448px-V1-5 + Nous-Hermes-2-Yi-34B (model card;
    # lmdeploy serves it with the Hermes-2 style template "internvl-zh-hermes2").
    "internvl2-40b": chat(vit_6b(), yi34b_hermes(), template="Hermes-2"),
    # ---- InternVL 2.5 (Dec 2024): InternViT-*-V2_5, template "internvl2_5", same pipeline.
    # Model/LLM pairs from the InternVL2_5-Pretrain-Models card table.  The Qwen2.5 llm blocks
    # follow the InternVL 2.5/3 Qwen2.5 llm_config seen in the InternVL3-1B config dump
    # (vocab 151674 = 151665 + 9, rope_theta 1e6, dynamic rope factor 2.0, untied head).
    # OpenGVLab/InternVL2_5-1B: Qwen2.5-0.5B-Instruct (896/4864, 24 layers, 14/2 heads).
    "internvl2_5-1b": chat(
        vit_300m(),
        qwen2("Qwen/Qwen2.5-0.5B-Instruct", hidden=896, inter=4864, layers=24, heads=14,
              kv_heads=2, vocab=151674,
              rope_scaling={"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}),
        template="internvl2_5"),
    # OpenGVLab/InternVL2_5-2B: internlm2_5-1_8b-chat (2048/8192, 24 layers, 16/8 heads).
    "internvl2_5-2b": chat(
        vit_300m(),
        internlm2("internlm/internlm2_5-1_8b-chat", hidden=2048, inter=8192, layers=24,
                  heads=16, kv_heads=8, rope_factor=2.0),
        template="internvl2_5"),
    # OpenGVLab/InternVL2_5-4B: Qwen2.5-3B-Instruct (2048/11008, 36 layers, 16/2 heads).
    # Qwen2.5-3B ties its head; the InternVL checkpoint does not: its safetensors hold
    # 4.99 GB + 2.43 GB of bf16 = 3.71B params, which only the untied head reaches.
    "internvl2_5-4b": chat(
        vit_300m(),
        qwen2("Qwen/Qwen2.5-3B-Instruct", hidden=2048, inter=11008, layers=36, heads=16,
              kv_heads=2, vocab=151674,
              rope_scaling={"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}),
        template="internvl2_5"),
    # OpenGVLab/InternVL2_5-8B: internlm2_5-7b-chat (head of the config verified in
    # zhouxihong/InternVL2_5-8B-AWQ/config.json, "_name_or_path": "OpenGVLab/InternVL2_5-8B").
    "internvl2_5-8b": chat(
        vit_300m(),
        internlm2("internlm/internlm2_5-7b-chat", hidden=4096, inter=14336, layers=32,
                  heads=32, kv_heads=8, rope_factor=2.0),
        template="internvl2_5"),
    # OpenGVLab/InternVL2_5-26B: InternViT-6B-448px-V2_5 + internlm2_5-20b-chat (same shape
    # as internlm2-chat-20b; rope_theta 5e7 and dynamic factor 2.5 per the internlm2_5-20b-chat
    # card — not read from the InternVL file).
    "internvl2_5-26b": chat(
        vit_6b(),
        internlm2("internlm/internlm2_5-20b-chat", hidden=6144, inter=16384, layers=48,
                  heads=48, kv_heads=8, rope_factor=2.5, rope_theta=50000000),
        template="internvl2_5"),
    # OpenGVLab/InternVL2_5-38B: InternViT-6B-448px-V2_5 + Qwen2.5-32B-Instruct
    # (5120/27648, 64 layers, 40/8 heads, per its published config.json).
    "internvl2_5-38b": chat(
        vit_6b(),
        qwen2("Qwen/Qwen2.5-32B-Instruct", hidden=5120, inter=27648, layers=64, heads=40,
              kv_heads=8, vocab=151674,
              rope_scaling={"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}),
        template="internvl2_5"),
    # OpenGVLab/InternVL2_5-78B: InternViT-6B-448px-V2_5 + Qwen2.5-72B-Instruct
    # (8192/29568, 80 layers, 64/8 heads, per its published config.json).
    "internvl2_5-78b": chat(
        vit_6b(),
        qwen2("Qwen/Qwen2.5-72B-Instruct", hidden=8192, inter=29568, layers=80, heads=64,
              kv_heads=8, vocab=151674,
              rope_scaling={"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}),
        template="internvl2_5"),
    # ---- InternVL3 (Apr 2025): InternViT-300M/6B-448px-V2_5, template "internvl2_5" (the
    # config field of every InternVL3 checkpoint; the repo's internvl3.0 fine-tune scripts use
    # conv_style internvl2_5).  Model/LLM pairs from the InternVL3 model cards' table:
    # 1B Qwen2.5-0.5B, 2B Qwen2.5-1.5B, 8B Qwen2.5-7B, 9B InternLM3-8B-Instruct, 14B Qwen2.5-14B,
    # 38B Qwen2.5-32B, 78B Qwen2.5-72B.  Qwen2.5 shapes per their published config.json files
    # (per published base); the 1B block verified against the InternVL3-1B config dump.
    "internvl3-1b": chat(
        vit_300m(),
        qwen25("Qwen/Qwen2.5-0.5B", hidden=896, inter=4864, layers=24, heads=14, kv_heads=2),
        template="internvl2_5"),
    "internvl3-2b": chat(
        vit_300m(),
        qwen25("Qwen/Qwen2.5-1.5B", hidden=1536, inter=8960, layers=28, heads=12, kv_heads=2),
        template="internvl2_5"),
    "internvl3-8b": chat(
        vit_300m(),
        qwen25("Qwen/Qwen2.5-7B", hidden=3584, inter=18944, layers=28, heads=28, kv_heads=4),
        template="internvl2_5"),
    # OpenGVLab/InternVL3-9B: InternLM3 is native in transformers 5 (no packed wqkv to undo).
    "internvl3-9b": chat(vit_300m(), internlm3_8b(), template="internvl2_5"),
    "internvl3-14b": chat(
        vit_300m(),
        qwen25("Qwen/Qwen2.5-14B", hidden=5120, inter=13824, layers=48, heads=40, kv_heads=8),
        template="internvl2_5"),
    "internvl3-38b": chat(
        vit_6b(),
        qwen25("Qwen/Qwen2.5-32B", hidden=5120, inter=27648, layers=64, heads=40, kv_heads=8),
        template="internvl2_5"),
    "internvl3-78b": chat(
        vit_6b(),
        qwen25("Qwen/Qwen2.5-72B", hidden=8192, inter=29568, layers=80, heads=64, kv_heads=8),
        template="internvl2_5"),
    # ---- InternVL3.5 (Aug 2025): same ViTs, Qwen3 dense / Qwen3-MoE / GPT-OSS LLMs.  Pairs
    # from the InternVL3.5 model cards' table (vision / language / total); LLM shapes per the
    # Qwen3 and gpt-oss config.json files (per published base).  Template: the Qwen3 models
    # use "internvl2_5" (conv_style of the repo's internvl3_5_qwen3 scripts), the GPT-OSS one
    # "internvl3_5_gpt_oss" (its stage-2/3 scripts and internvl_chat_gpt_oss/conversation.py).
    # Every size is published in this (official) layout and as "<name>-HF" (native layout).
    "internvl3_5-1b": chat(
        vit_300m(),
        qwen3("Qwen/Qwen3-0.6B", hidden=1024, inter=3072, layers=28, heads=16, kv_heads=8),
        template="internvl2_5"),
    "internvl3_5-2b": chat(
        vit_300m(),
        qwen3("Qwen/Qwen3-1.7B", hidden=2048, inter=6144, layers=28, heads=16, kv_heads=8),
        template="internvl2_5"),
    "internvl3_5-4b": chat(
        vit_300m(),
        qwen3("Qwen/Qwen3-4B", hidden=2560, inter=9728, layers=36, heads=32, kv_heads=8),
        template="internvl2_5"),
    "internvl3_5-8b": chat(
        vit_300m(),
        qwen3("Qwen/Qwen3-8B", hidden=4096, inter=12288, layers=36, heads=32, kv_heads=8),
        template="internvl2_5"),
    "internvl3_5-14b": chat(
        vit_300m(),
        qwen3("Qwen/Qwen3-14B", hidden=5120, inter=17408, layers=40, heads=40, kv_heads=8),
        template="internvl2_5"),
    "internvl3_5-38b": chat(
        vit_6b(),
        qwen3("Qwen/Qwen3-32B", hidden=5120, inter=25600, layers=64, heads=64, kv_heads=8),
        template="internvl2_5"),
    "internvl3_5-30b-a3b": chat(
        vit_300m(),
        qwen3_moe("Qwen/Qwen3-30B-A3B", hidden=2048, inter=6144, moe_inter=768, layers=48,
                  heads=32, kv_heads=4),
        template="internvl2_5"),
    "internvl3_5-241b-a28b": chat(
        vit_6b(),
        qwen3_moe("Qwen/Qwen3-235B-A22B", hidden=4096, inter=12288, moe_inter=1536, layers=94,
                  heads=64, kv_heads=4),
        template="internvl2_5"),
    # OpenGVLab/InternVL3_5-GPT-OSS-20B-A4B-Preview (the blog lists it as InternVL3_5-20B-A4B).
    "internvl3_5-gpt-oss-20b-a4b-preview": chat(vit_300m(), gpt_oss_20b(),
                                                template="internvl3_5_gpt_oss"),
    # ---- Made-up sizes for tests and benchmarks (same layout, tiny numbers).
    # tiny: 56 px tiles / patch 14 -> 4x4 grid -> pixel shuffle 0.5 -> 2x2 = 4 tokens per tile;
    # vision 2 layers width 32 (2 heads), projector 128 -> 64, Qwen2 2 layers width 64, 4/2
    # heads, vocab 512.  A forward over a few tiles takes milliseconds on CPU.
    "tiny": chat(
        vit_300m(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=56, use_flash_attn=False),
        qwen2("tiny", hidden=64, inter=128, layers=2, heads=4, kv_heads=2, vocab=512,
              eos=2) | {"bos_token_id": 1, "max_position_embeddings": 2048},
        template="Hermes-2", max_patch=6),
    # tiny-qwen3 / tiny-qwen3-moe: `tiny` with the InternVL3.5 LLM kinds (head_dim 16, q/k
    # RMSNorm; the MoE with 4 experts of width 32, top-2), for the CLI tests of the new families.
    "tiny-qwen3": chat(
        vit_300m(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=56, use_flash_attn=False),
        qwen3("tiny-qwen3", hidden=64, inter=128, layers=2, heads=4, kv_heads=2)
        | {"head_dim": 16, "vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2,
           "max_position_embeddings": 2048},
        template="Hermes-2", max_patch=6),
    "tiny-qwen3-moe": chat(
        vit_300m(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=56, use_flash_attn=False),
        qwen3_moe("tiny-qwen3-moe", hidden=64, inter=128, moe_inter=32, layers=2, heads=4,
                  kv_heads=2, experts=4, top_k=2)
        | {"head_dim": 16, "vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2,
           "max_position_embeddings": 2048},
        template="Hermes-2", max_patch=6),
    # tiny-gpt-oss: `tiny` with a GPT-OSS LLM (4 experts top-2, sinks, layers alternating an
    # 8-token sliding window and full attention, so chats longer than 8 tokens use both).
    "tiny-gpt-oss": chat(
        vit_300m(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=56, use_flash_attn=False),
        gpt_oss_20b() | {
            "_name_or_path": "tiny-gpt-oss", "hidden_size": 64, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 512,
            "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                             "beta_slow": 1.0, "truncate": False,
                             "original_max_position_embeddings": 512}},
        template="Hermes-2", max_patch=6),
    # small: 224 px / patch 14 -> 16x16 grid -> 64 tokens per tile; vision 6 layers width 256
    # (4 heads), Qwen2 4 layers width 512 (8/2 heads), vocab 4096: 7 tiles + prompt run well
    # under a second on CPU, so benchmarks measure the pipeline and not the network.
    "small": chat(
        vit_300m(hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                 num_attention_heads=4, image_size=224, use_flash_attn=False),
        qwen2("small", hidden=512, inter=1408, layers=4, heads=8, kv_heads=2, vocab=4096,
              eos=2) | {"bos_token_id": 1, "max_position_embeddings": 8192},
        template="Hermes-2", max_patch=6),
    # tilevl-tiny: the model this project trains on MiniBench and ships in tilevl/assets
    # (scripts/train_tilevl_tiny.py).  112 px tiles / patch 14 -> 8x8 grid -> pixel shuffle
    # 0.5 -> 4x4 = 16 tokens per tile, up to 6 tiles + thumbnail; vision 4 layers width 192
    # (3 heads), projector 768 -> 256, Qwen2 4 layers width 256 (4/2 heads), vocab 2048 for a
    # BPE tokenizer trained on MiniBench text (ids as build_bpe_tokenizer gives them: 1 is
    # <|im_end|>, 2 <|endoftext|>).  ~6 M parameters: ~12 MB in fp16, and a
    # training step over a packed row of a few thousand tokens takes well under a second on CPU.
    "tilevl-tiny": chat(
        vit_300m(hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=3, image_size=112, use_flash_attn=False),
        qwen2("tilevl-tiny", hidden=256, inter=768, layers=4, heads=4, kv_heads=2, vocab=2048,
              eos=1) | {"bos_token_id": 2, "max_position_embeddings": 4096},
        template="tilevl", max_patch=6),
}

# The made-up presets; every other preset stands for a published checkpoint.
SYNTHETIC_PRESETS = ("tiny", "tiny-qwen3", "tiny-qwen3-moe", "tiny-gpt-oss", "small", "tilevl-tiny")

# Published total parameter counts.  "HF" = the safetensors "Model size" figure on the
# checkpoint's Hugging Face page (computed from the stored tensors, shown to 3 significant
# figures, so the last digit carries up to ±0.5 of its unit); where the bf16 file sizes were
# visible they are quoted too.  Values marked "recalled" could not be re-read here.
PUBLISHED_PARAMS: dict[str, tuple[int, str]] = {
    "internvl-chat-v1-2": (40_100_000_000, "HF OpenGVLab/InternVL-Chat-V1-2 model size 40.1B (recalled); card says 40B"),
    "internvl-chat-v1-2-plus": (40_100_000_000, "HF OpenGVLab/InternVL-Chat-V1-2-Plus model size 40.1B (recalled)"),
    "internvl-chat-v1-5": (25_500_000_000, "HF OpenGVLab/InternVL-Chat-V1-5 model size 25.5B; card 'Model size 25.5B'"),
    "mini-internvl-chat-2b-v1-5": (2_210_000_000, "HF model size 2.21B (seen on a re-upload, Hariprasath28/Mini-InternVL-Chat-2B-V1-5); card 2.2B"),
    "mini-internvl-chat-4b-v1-5": (4_150_000_000, "HF OpenGVLab/Mini-InternVL-Chat-4B-V1-5 model size 4.15B (recalled); card 4.2B"),
    "internvl2-1b": (938_000_000, "HF OpenGVLab/InternVL2-1B model size 938M; card 0.9B"),
    "internvl2-2b": (2_210_000_000, "HF OpenGVLab/InternVL2-2B model size 2.21B (recalled); card 2.2B"),
    "internvl2-4b": (4_150_000_000, "HF OpenGVLab/InternVL2-4B model size 4.15B (recalled); card 4.2B"),
    "internvl2-8b": (8_080_000_000, "HF model size 8.08B (seen on InternVL2-8B fine-tune re-uploads); card 8.1B"),
    "internvl2-26b": (25_500_000_000, "HF OpenGVLab/InternVL2-26B model size 25.5B (recalled); card 25.5B"),
    "internvl2-40b": (40_100_000_000, "HF OpenGVLab/InternVL2-40B model size 40.1B (recalled); card 40.1B"),
    "internvl2_5-1b": (938_000_000, "HF model size 938M (seen on zhaoyuzhi/ICM-InternVL2_5-1B, a fine-tune)"),
    "internvl2_5-2b": (2_210_000_000, "HF OpenGVLab/InternVL2_5-2B model size 2.21B (recalled)"),
    "internvl2_5-4b": (3_710_000_000, "HF OpenGVLab/InternVL2_5-4B: 4.99 GB + 2.43 GB bf16 shards = 3.71B"),
    "internvl2_5-8b": (8_080_000_000, "HF OpenGVLab/InternVL2_5-8B model size 8.08B (recalled)"),
    "internvl2_5-26b": (25_500_000_000, "HF OpenGVLab/InternVL2_5-26B model size 25.5B (recalled)"),
    "internvl2_5-38b": (38_400_000_000, "HF OpenGVLab/InternVL2_5-38B model size 38.4B (recalled)"),
    "internvl2_5-78b": (78_400_000_000, "HF OpenGVLab/InternVL2_5-78B model size 78.4B (recalled)"),
    "internvl3-1b": (938_000_000, "HF OpenGVLab/InternVL3-1B model size 938M (recalled); card 1B"),
    "internvl3-2b": (2_090_000_000, "HF OpenGVLab/InternVL3-2B model size 2.09B (recalled); card 2B"),
    "internvl3-8b": (7_940_000_000, "HF OpenGVLab/InternVL3-8B model size 7.94B (recalled); card 8B"),
    "internvl3-9b": (9_140_000_000, "HF OpenGVLab/InternVL3-9B model size 9.14B (recalled); card 9B"),
    "internvl3-14b": (15_100_000_000, "HF OpenGVLab/InternVL3-14B model size 15.1B (recalled)"),
    "internvl3-38b": (38_400_000_000, "HF OpenGVLab/InternVL3-38B model size 38.4B (recalled)"),
    "internvl3-78b": (78_400_000_000, "HF OpenGVLab/InternVL3-78B model size 78.4B (recalled)"),
    # InternVL3.5 cards tabulate vision / language / total params; the HF sizes agree where
    # both were seen (1B: card 1.1B; 2B 2.3B; 4B 4.7B; 8B 8.5B).
    "internvl3_5-1b": (1_060_000_000, "HF OpenGVLab/InternVL3_5-1B model size 1.06B (recalled); card 0.3B + 0.8B = 1.1B"),
    "internvl3_5-2b": (2_350_000_000, "HF OpenGVLab/InternVL3_5-2B model size 2.35B (recalled); card 0.3B + 2.0B = 2.3B"),
    "internvl3_5-4b": (4_730_000_000, "HF OpenGVLab/InternVL3_5-4B model size 4.73B (recalled); card 0.3B + 4.4B = 4.7B"),
    "internvl3_5-8b": (8_530_000_000, "HF OpenGVLab/InternVL3_5-8B model size 8.53B (recalled); card 0.3B + 8.2B = 8.5B"),
    "internvl3_5-14b": (15_100_000_000, "card 0.3B + 14.8B = 15.1B (InternVL3.5 model card table)"),
    "internvl3_5-38b": (38_400_000_000, "card 5.5B + 32.8B = 38.4B (InternVL3.5 model card table)"),
    "internvl3_5-30b-a3b": (30_800_000_000, "card 0.3B + 30.5B = 30.8B (InternVL3.5 model card table)"),
    "internvl3_5-241b-a28b": (240_700_000_000, "card 5.5B + 235.1B = 240.7B (InternVL3.5 model card table)"),
    "internvl3_5-gpt-oss-20b-a4b-preview": (21_200_000_000, "card 0.3B + 20.9B = 21.2B (InternVL3.5 model card table)"),
}


# ---------------------------------------------------------------------------------------------
# Access.
# ---------------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    """The preset names, published checkpoints first then tiny/small, in registry order."""
    return list(PRESETS)


# Other spellings of the published names: the hub repo id, "3.5" for "3_5", the blog's short
# GPT-OSS name, and the suffixes of variants with the same network (-HF is the native layout
# of the same weights; -Instruct / -MPO / -Pretrained are training stages).
_VARIANT_SUFFIXES = ("-hf", "-instruct", "-mpo", "-pretrained")
_ALIASES = {
    "internvl3_5-20b-a4b": "internvl3_5-gpt-oss-20b-a4b-preview",
    "internvl3_5-gpt-oss-20b-a4b": "internvl3_5-gpt-oss-20b-a4b-preview",
}


def canonical_preset_name(name: str) -> str:
    """The registry key for a published name in any of its usual spellings.

    `OpenGVLab/InternVL3.5-8B-HF`, `internvl3_5-8b-instruct` and `InternVL3_5-8B` all give
    `internvl3_5-8b`; an unknown name comes back lower-cased and otherwise unchanged.
    """
    key = name.strip().lower()
    if key.startswith("opengvlab/"):
        key = key[len("opengvlab/"):]
    key = key.replace("internvl3.5", "internvl3_5")
    if key in PRESETS:
        return key
    stripped = True
    while stripped:  # e.g. "-mpo-hf": strip every variant suffix, in any order
        stripped = next((key[: -len(s)] for s in _VARIANT_SUFFIXES if key.endswith(s)), None)
        key = stripped or key
    key = _ALIASES.get(key, key)
    return key if key in PRESETS else name.strip().lower()


def get_preset(name: str) -> dict:
    """A deep copy of the named preset's config dict; names are matched case-insensitively,
    in the spellings `canonical_preset_name` accepts (`InternVL3.5-8B-HF` …).

    Raises ConfigError naming the unknown name and listing the known ones.
    """
    if not isinstance(name, str):
        raise ConfigError(f"preset name must be a string, got {type(name).__name__}: {name!r}")
    key = canonical_preset_name(name)
    if key not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[key])
