"""The DALI graphs. Two pipelines per rank, because DALI 2.4 cannot checkpoint its video decoder:

- the reader graph (CPU, checkpointed): webdataset reader over this rank's part of the shards, shuffle buffer,
  and the uniform draws every random choice is made from. Its checkpoint is the loader's exact-resume state.
- the decode graph (CPU, NVDEC or nvJPEG, stateless: no random operator): pixels + crop boxes + flips
  (+ RandAugment ops and signs) in, normalised views out. The loader turns draws into indices, boxes and
  choices with `pipeline.sampling` between the two, so the DALI path and the reference loader share one
  definition of them, and the reader's checkpoint fixes every random choice of a resumed run.

Video shards: one sample of the decode graph is one clip (eval decodes test_num_segment windows at once and
slices them):

    encoded --decoders.video(frames=indices)--> F x H x W x C uint8
      for each view v: [window] --resize(roi=box_v, size=input, antialias in pretrain only)--> [RandAugment]
                       --normalise, mirror=flip_v--> C x T x S x S
    stack views --> V x C x T x S x S   (the loader reshapes B x V x ... to (B*V) x ... without a copy)

JPEG-frame shards: one sample is one frame, and a batch is all frames of all its clips, flat, in one decoder
call; each frame carries its clip's window, boxes, flip and RandAugment choices, so all frames of a clip get the
same ones:

    jpeg --decoders.image_slice(window)--> h x w x C uint8   (only the part of the frame the clip's views need)
      for each view v: --resize(roi=box_v)--> [RandAugment] --normalise, mirror=flip_v--> C x S x S
    stack views --> Vf x C x S x S   (the loader views T x B x Vf x ... as (B*Vf) x C x T x S x S without a copy)
"""

from __future__ import annotations

import warnings

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import rand_augment
from nvidia.dali.auto_aug.core import select, signed_bin

from pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from pipeline.sampling import derive_seed, resize_antialias, space_draws
from pipeline.shards import VIDEO_EXTENSIONS, Shards

OUTPUT_TYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT}  # bf16: cast in torch
RAND_AUGMENT_BINS = 11  # magnitudes 0..10, as timm's `rand-m7-n4` used by VideoMAE fine-tuning
# DALI's RandAugment suite; which op and which sign are chosen from the reader graph's draws, not inside the decode
# graph, so that the decode graph holds no random state and exact resume covers fine-tuning too
RAND_AUGMENT_OPS = rand_augment.get_rand_augment_suite(use_shape=True)


def reader_pipeline(cfg: DataConfig, shards: Shards, shard_id: int, num_shards: int, checkpoint=None):
    """Reader graph, built: (encoded, frames, label, meta json, u_time, u_space) per sample; for JPEG-frame shards
    without `encoded` (the loader reads the frames it needs from the tar itself, not the whole member)."""
    if cfg.mode == "eval":  # every rank reads the same part each epoch, in stored order
        order = dict(stick_to_shard=True)
    else:  # tar order reshuffled each epoch (the same on every rank, so the parts stay disjoint), then a buffer
        order = dict(random_shuffle=True, initial_fill=cfg.shuffle_buffer, shuffle_after_epoch=True,
                     shuffle_after_epoch_seed=cfg.seed)

    @pipeline_def(enable_checkpointing=True)
    def graph():
        members = ["frames", "label", "json"] if shards.frames else [";".join(VIDEO_EXTENSIONS), "frames", "label",
                                                                    "json"]
        read = fn.readers.webdataset(
            paths=shards.tars, index_paths=shards.indexes, name="reader", ext=members,
            dtypes=[types.INT32 if m in ("frames", "label") else types.UINT8 for m in members],
            missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
            pad_last_batch=True,  # every epoch ends on a batch boundary; the loader drops the padding
            dont_use_mmap=True,  # a shard truncated during a run: a read error the loader names, not SIGBUS
            seed=derive_seed(cfg.seed, shard_id, 5), **order)
        u_time = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.num_frames])
        u_space = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.num_views, space_draws(cfg)])
        return *read, u_time, u_space

    pipe = graph(batch_size=cfg.batch_size, num_threads=1, device_id=None, prefetch_queue_depth=2,
                 seed=derive_seed(cfg.seed, shard_id, 6), checkpoint=checkpoint)
    pipe.build()
    return pipe


def decode_pipeline(cfg: DataConfig, decode_device: str, device_id: int | None, seed: int):
    """Decode graph of video shards, built, fed through external sources 'encoded', 'indices', 'boxes', 'flips'
    and, in fine-tuning with RandAugment, 'augment' ((V, n, 2): op index and sign per view and op).

    Outputs: views (V x C x T x S x S per clip) and the decoded shape (F, H, W, C) the boxes were cut from.
    With a `device_id` the views end on that GPU; frames decoded on the CPU are uploaded before the resize.
    The loader feeds it with `feed_input` and keeps up to `cfg.prefetch` batches scheduled, so DALI's own
    prefetch queue stays at 1 (the dynamic executor queues scheduled runs without blocking).
    """
    @pipeline_def(enable_conditionals=cfg.rand_augment_ops > 0)
    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        indices = fn.external_source(name="indices", dtype=types.INT32, ndim=1)
        boxes, flips, augment = view_inputs(cfg)
        video = fn.decoders.video(encoded, frames=indices, device="mixed" if decode_device == "gpu" else "cpu")
        frames = video.gpu() if device_id is not None else video  # no-op after NVDEC
        views = []
        for v in range(cfg.num_views):
            clip = frames
            if cfg.mode == "eval":
                t = v // cfg.test_num_crop
                clip = frames[t * cfg.num_frames:(t + 1) * cfg.num_frames]
            views.append(view(cfg, clip, boxes, flips, augment, v, "CFHW"))
        return stacked(views), video.shape()

    return build(graph, cfg.batch_size, cfg, device_id, seed)


def frames_per_clip(cfg: DataConfig) -> int:
    """Frames decoded per clip: num_frames, or one window per temporal view in eval."""
    return cfg.num_frames * (cfg.test_num_segment if cfg.mode == "eval" else 1)


def views_per_frame(cfg: DataConfig) -> int:
    """Views cut from each decoded frame: every view in training, the crops of its window in eval."""
    return cfg.test_num_crop if cfg.mode == "eval" else cfg.num_sample


def frames_decode_pipeline(cfg: DataConfig, decode_device: str, device_id: int | None, seed: int):
    """Decode graph of JPEG-frame shards, built. One sample is one frame; fed through external sources 'jpegs'
    (one JPEG image), 'windows' ((4,): y0, x0, height, width of the part of the frame to decode; whole pixels),
    'boxes' ((Vf, 4): the views' boxes in window pixels), 'flips' ((Vf,)) and, in fine-tuning with RandAugment,
    'augment' ((Vf, n, 2)); every frame of a clip gets its clip's values.

    `data.roi_decode` decodes only the window (DALI's ROI decoder, `image_slice`), else the whole frame (no
    'windows' input; the boxes are in frame pixels). On a GPU (`decode_device` 'gpu') nvJPEG decodes, splitting the work between the
    hardware JPEG engines and CUDA by `data.hw_decoder_load`.

    Outputs: views (Vf x C x S x S per frame) and each JPEG's (H, W, C) as its header says, to check against the
    clip's .json. Batches up to batch_size x frames_per_clip frames.
    """
    gpu = decode_device == "gpu"

    @pipeline_def(enable_conditionals=cfg.rand_augment_ops > 0)
    def graph():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        boxes, flips, augment = view_inputs(cfg)
        decoder = dict(device="mixed", hw_decoder_load=cfg.hw_decoder_load) if gpu else dict(device="cpu")
        if cfg.roi_decode:
            windows = fn.external_source(name="windows", dtype=types.FLOAT, ndim=1)
            frame = fn.decoders.image_slice(jpegs, windows[0:2], windows[2:4], axis_names="HW",
                                            normalized_anchor=False, normalized_shape=False,
                                            output_type=types.RGB, **decoder)
        else:
            frame = fn.decoders.image(jpegs, output_type=types.RGB, **decoder)
        frame = frame.gpu() if device_id is not None and not gpu else frame
        views = [view(cfg, frame, boxes, flips, augment, v, "CHW") for v in range(views_per_frame(cfg))]
        return stacked(views), fn.peek_image_shape(jpegs)

    return build(graph, cfg.batch_size * frames_per_clip(cfg), cfg, device_id, seed)


def frame_inputs(cfg: DataConfig, clips: dict[str, list]) -> dict[str, list]:
    """The frames graph's inputs, one per frame, from per-clip inputs ('jpegs': each clip's frames_per_clip
    JPEGs; 'windows', 'boxes', 'flips'[, 'augment']: per clip). Frames are ordered (output frame t, clip, temporal
    view g), so that the graph's output is (T, B, G, Vf, C, S, S) in memory, which the loader views as the batch's
    (B*G*Vf, C, T, S, S) rows without a copy; each frame carries its clip's window and its temporal view's boxes,
    flips and RandAugment choices."""
    per_view, t_count = views_per_frame(cfg), cfg.num_frames
    g_count = frames_per_clip(cfg) // t_count
    order = [(c, g) for c in range(len(clips["jpegs"])) for g in range(g_count)]
    flat = {"jpegs": [clips["jpegs"][c][g * t_count + t] for t in range(t_count) for c, g in order]}
    if "windows" in clips:
        flat["windows"] = [clips["windows"][c] for _ in range(t_count) for c, _ in order]
    for name in ("boxes", "flips", "augment"):
        if name in clips:
            flat[name] = [clips[name][c][g * per_view:(g + 1) * per_view] for _ in range(t_count) for c, g in order]
    return flat


def view_inputs(cfg: DataConfig):
    """External sources of the views' boxes ((V, 4): y0, x0, y1, x1), flips ((V,)) and RandAugment choices
    ((V, n, 2), or None without RandAugment)."""
    boxes = fn.external_source(name="boxes", dtype=types.FLOAT, ndim=2)
    flips = fn.external_source(name="flips", dtype=types.INT32, ndim=1)
    augment = fn.external_source(name="augment", dtype=types.INT32, ndim=3) if cfg.rand_augment_ops else None
    return boxes, flips, augment


def view(cfg: DataConfig, pixels, boxes, flips, augment, v: int, layout: str):
    """View v of `pixels` (H x W x C, or F x H x W x C: one crop for every frame): box v resized to input_size,
    RandAugment ops v, normalised and flipped as flip v, in `layout` (CHW or CFHW)."""
    size = [cfg.input_size, cfg.input_size]
    pixels = fn.resize(pixels, roi_start=boxes[v, 0:2], roi_end=boxes[v, 2:4], size=size,
                       interp_type=types.INTERP_LINEAR, antialias=resize_antialias(cfg))  # S x S x C uint8
    for level in range(cfg.rand_augment_ops):  # the same ops for every frame
        magnitude = signed_bin(cfg.rand_augment_m, random_sign=augment[v, level, 1])
        pixels = select(RAND_AUGMENT_OPS, augment[v, level, 0], data=pixels, magnitude_bin=magnitude,
                        num_magnitude_bins=RAND_AUGMENT_BINS, shape=size, fill_value=128)
    return fn.crop_mirror_normalize(pixels, mirror=flips[v], mean=[m * 255 for m in IMAGENET_MEAN],
                                    std=[s * 255 for s in IMAGENET_STD], output_layout=layout,
                                    dtype=OUTPUT_TYPES[cfg.dtype])


def stacked(views: list):
    """V x ... from V views; one view gains its leading axis without the copy fn.stack would make."""
    return fn.stack(*views) if len(views) > 1 else fn.expand_dims(views[0], axes=[0])


def build(graph, batch_size: int, cfg: DataConfig, device_id: int | None, seed: int):
    with warnings.catch_warnings(record=True):  # DALI's auto_aug calls deprecated aliases of its own operators
        pipe = graph(batch_size=batch_size, num_threads=cfg.num_threads, device_id=device_id, seed=seed,
                     prefetch_queue_depth=1)
        pipe.build()
    return pipe


def window_pipeline(frames: bool, decode_device: str, batch_size: int, num_threads: int):
    """The decoder alone, built, for `bench decode`'s cost per clip against the last frame index: video shards
    fed 'encoded' and 'indices' (the frames to decode) per clip, JPEG-frame shards 'jpegs' (one image per
    sample, a batch of clips x frames); outputs the decoded frames."""
    device = "mixed" if decode_device == "gpu" else "cpu"

    @pipeline_def
    def graph():
        if frames:
            return fn.decoders.image(fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1), device=device,
                                     output_type=types.RGB)
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        indices = fn.external_source(name="indices", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, frames=indices, device=device)

    pipe = graph(batch_size=batch_size, num_threads=num_threads, device_id=0 if device == "mixed" else None,
                 prefetch_queue_depth=1)
    pipe.build()
    return pipe
