"""The server's limits, by name: one dataclass, one `tilevl serve --flag` per field.

Kept free of torch and FastAPI so that building the command line stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Every limit of the server, by name (each is also a `tilevl serve --flag`).

    Attributes:
        max_body_bytes: largest request body; larger answers 413.
        max_images_per_request: images in all messages of one request.
        max_tiles_per_image: ceiling of `max_tiles` (None: the checkpoint's max_num).
        max_total_tiles: tiles of all images of one request, thumbnails included.
        max_image_pixels: width·height of one decoded image (checked before decoding).
        max_image_aspect_ratio: longer side / shorter side of one image (a 1×100000 strip
            has no content a tile could show; Qwen2-VL's processor refuses > 200 too).
        max_prompt_tokens: rendered prompt tokens, image tokens included.
        max_prompt_chars: characters of text in all messages, checked before tokenizing
            (None: 16 × the prompt token limit; a token rarely spans more than 16 characters,
            so only text that could never fit is refused without being tokenized).
        max_new_tokens_limit: the largest `max_tokens` accepted; also the default.
        max_n: the largest `n`.
        queue_size: requests waiting for the model (or being prepared); more answer 429.
        max_batch_size: rows (choices) decoded together.
        max_prefill_tokens: prompt tokens prefilled between two decoding steps.
        request_timeout: seconds a request may take end to end; then 504 / an error event.
        default_temperature: used when a request gives none (0: greedy, as InternVL's chat()).
        allowed_local_media_path: folder whose files may be named by `file://` or a path.
        allow_remote_images: fetch http(s) image URLs (else they are refused).
        remote_image_max_bytes: largest remote image download.
        remote_image_timeout: seconds for one remote image download.
        preprocess_workers: threads that decode and tile images.
        header_timeout: seconds a connection may take to send a complete request head,
            counted from connecting or from its previous response (so also the keep-alive
            limit); then it is closed (408 when a head was under way).
        body_timeout: seconds a request body may stall between two chunks; then 408.
        max_connections: open connections; when full, the one waiting longest for headers is
            closed for a newcomer, and if every one is inside a request, new requests get 503.
        prefix_cache: keep the KV of earlier prompts and the features of earlier images, and
            reuse them for any request that starts the same way (`--no-prefix-cache`: off).
        cache_gb: memory budget of the prefix cache in GiB (least recently used goes first).
    """

    max_body_bytes: int = 32 * 2**20
    max_images_per_request: int = 16
    max_tiles_per_image: int | None = None
    max_total_tiles: int = 64
    max_image_pixels: int = 50_000_000
    max_image_aspect_ratio: float = 200.0
    max_prompt_tokens: int = 16384
    max_prompt_chars: int | None = None
    max_new_tokens_limit: int = 2048
    max_n: int = 8
    queue_size: int = 256
    max_batch_size: int = 32
    max_prefill_tokens: int = 4096
    request_timeout: float = 600.0
    default_temperature: float = 0.0
    allowed_local_media_path: str | None = None
    allow_remote_images: bool = False
    remote_image_max_bytes: int = 20 * 2**20
    remote_image_timeout: float = 10.0
    preprocess_workers: int = 4
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1024
    prefix_cache: bool = True
    cache_gb: float = 2.0
