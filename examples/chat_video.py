"""The seeds' "Video multi-round conversation": frames sampled with get_index, one tile each.

Needs PyAV (`pip install 'tilevl[video]'`). Without a VIDEO argument it writes a short clip.
Usage: python examples/chat_video.py [CHECKPOINT] [VIDEO]
"""

import sys

import tilevl
from tilevl.inputs.video import video_prompt

path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-checkpoint"
video_path = sys.argv[2] if len(sys.argv) > 2 else "runs/example-clip.mp4"
if len(sys.argv) <= 2:  # draw a 2-second clip of a square moving right
    import os

    import av
    import numpy as np

    os.makedirs(os.path.dirname(video_path) or ".", exist_ok=True)
    with av.open(video_path, "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(30):
            frame = np.full((96, 160, 3), 255, np.uint8)
            frame[30:60, 4 * i:4 * i + 30] = (220, 40, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())

model = tilevl.load_model(path).eval()
tokenizer = tilevl.load_tokenizer(path)
settings = model.image_settings
pixel_values, num_patches_list = tilevl.load_video(video_path, num_segments=8, image_size=settings.image_size, max_num=1)
generation_config = dict(max_new_tokens=32, do_sample=False)

question = video_prompt(len(num_patches_list)) + 'What is the red square doing?'
# Frame1: <image>\nFrame2: <image>\n...\nFrame8: <image>\n{question}
response, history = model.chat(tokenizer, pixel_values, question, generation_config,
                               num_patches_list=num_patches_list, history=None, return_history=True)
print(f'User: {question}\nAssistant: {response}')

question = 'Describe this video in detail.'
response, history = model.chat(tokenizer, pixel_values, question, generation_config,
                               num_patches_list=num_patches_list, history=history, return_history=True)
print(f'User: {question}\nAssistant: {response}')
