"""The papers' data and test-time recipes: CoT-consistency data (cot), InternVL 1.5's
translation pipeline (translate) and MMAlaya2's per-category LoRAs merged with TIES (mmalaya).
"""
