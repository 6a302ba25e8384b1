"""The seeds' image conversations: single image, multi-round, combined and separate images.

`tilevl.load_image` + `tilevl.preprocess` replace CLIPImageProcessor; the settings (tile
size, max tiles, thumbnail, mean/std) come from the checkpoint, never from defaults here.
"""

import sys

import torch
from PIL import Image, ImageDraw

import tilevl

path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-checkpoint"
model = tilevl.load_model(path).eval()
tokenizer = tilevl.load_tokenizer(path)


def example_image(colour: str, size=(640, 360)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((40, 40, 300, 300), fill=colour)
    return image


pixel_values1 = tilevl.preprocess(example_image("red"), model.image_settings)
pixel_values2 = tilevl.preprocess(example_image("blue", (300, 900)), model.image_settings)
generation_config = dict(max_new_tokens=32, do_sample=False)

# single-image multi-round conversation
question = '<image>\nPlease describe the image in detail.'
response, history = model.chat(tokenizer, pixel_values1, question, generation_config, history=None, return_history=True)
print(f'User: {question}\nAssistant: {response}')
question = 'Please write a poem according to the image.'
response, history = model.chat(tokenizer, pixel_values1, question, generation_config, history=history, return_history=True)
print(f'User: {question}\nAssistant: {response}')

# multi-image, combined: one <image> stands for all tiles
pixel_values = torch.cat((pixel_values1, pixel_values2), dim=0)
question = '<image>\nDescribe the two images in detail.'
response = model.chat(tokenizer, pixel_values, question, generation_config)
print(f'User: {question}\nAssistant: {response}')

# multi-image, separate: one placeholder per image
num_patches_list = [pixel_values1.size(0), pixel_values2.size(0)]
question = 'Image-1: <image>\nImage-2: <image>\nWhat are the similarities and differences between these two images.'
response, history = model.chat(tokenizer, pixel_values, question, generation_config,
                               num_patches_list=num_patches_list, history=None, return_history=True)
print(f'User: {question}\nAssistant: {response}')

# batch inference, one image per sample (one forward per step for the whole batch)
questions = ['<image>\nDescribe the image in detail.'] * len(num_patches_list)
responses = model.batch_chat(tokenizer, pixel_values, num_patches_list=num_patches_list,
                             questions=questions, generation_config=generation_config)
for question, response in zip(questions, responses):
    print(f'User: {question}\nAssistant: {response}')
