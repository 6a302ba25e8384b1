"""The seeds' "Pure-text conversation", with only the loading lines changed."""

import sys

import torch

import tilevl

path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-checkpoint"
model = tilevl.load_model(path, dtype=torch.bfloat16 if torch.cuda.is_available() else None).eval()
tokenizer = tilevl.load_tokenizer(path)

generation_config = dict(max_new_tokens=64, do_sample=False)
question = 'Hello, who are you?'
response, history = model.chat(tokenizer, None, question, generation_config, history=None, return_history=True)
print(f'User: {question}')
print(f'Assistant: {response}')

question = 'Can you tell me a story?'
response, history = model.chat(tokenizer, None, question, generation_config, history=history, return_history=True)
print(f'User: {question}')
print(f'Assistant: {response}')
