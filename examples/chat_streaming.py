"""The seeds' "Streaming output": model.chat in a thread, a TextIteratorStreamer in front."""

import sys
from threading import Thread

from PIL import Image
from transformers import TextIteratorStreamer

import tilevl

path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-checkpoint"
model = tilevl.load_model(path).eval()
tokenizer = tilevl.load_tokenizer(path)
pixel_values = tilevl.preprocess(Image.new("RGB", (448, 448), "green"), model.image_settings)
question = '<image>\nPlease describe the image shortly.'

# Initialize the streamer
streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
# Define the generation configuration
generation_config = dict(max_new_tokens=32, do_sample=False, streamer=streamer)
# Start the model chat in a separate thread
thread = Thread(target=model.chat, kwargs=dict(
    tokenizer=tokenizer, pixel_values=pixel_values, question=question,
    history=None, return_history=False, generation_config=generation_config,
))
thread.start()

# Loop through the streamer to get the new text as it is generated
generated_text = ''
for new_text in streamer:
    if new_text == model.conv_template.sep:
        break
    generated_text += new_text
    print(new_text, end='', flush=True)
thread.join()
print()
