"""One long video from the per-step clips (PyAV), and its captions as WebVTT.

Clips that the same encoder wrote with the same settings share their H.264 parameter sets, so they are joined
by *stream copy* (packets re-timed, nothing re-encoded: fast and lossless). Clips that differ (another size,
rate or encoder setting) are decoded and re-encoded instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np

from auteur.io import atomic_path, atomic_write_text
from auteur.video import decode_all, probe, write_mp4
from videogen.errors import VideogenError

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        return (cc.name, cc.width, cc.height, bytes(cc.extradata or b""), s.time_base, s.average_rate)


def _stream_copy(clips: Sequence[Path], dst: Path) -> None:
    with atomic_path(dst, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            ostream = None
            offset = 0  # in the clips' (shared) time base
            for clip in clips:
                with av.open(str(clip)) as inp:
                    s = inp.streams.video[0]
                    if ostream is None:
                        ostream = out.add_stream_from_template(s)
                    end = offset
                    for packet in inp.demux(s):
                        if packet.dts is None:  # the demuxer's flush packet
                            continue
                        packet.pts += offset
                        packet.dts += offset
                        end = max(end, packet.pts + (packet.duration or 0))
                        packet.stream = ostream
                        out.mux(packet)
                    offset = end


def concat_clips(clips: Sequence[str | Path], dst: str | Path, fps: float, crf: int = 20) -> Path:
    """Write the clips one after another into the mp4 ``dst`` (atomically); returns ``Path(dst)``."""
    clips = [Path(c) for c in clips]
    dst = Path(dst)
    if not clips:
        raise VideogenError(f"no clips to assemble into {dst}")
    sigs = {_signature(c) for c in clips}
    if len(sigs) == 1:
        try:
            _stream_copy(clips, dst)
            return dst
        except (av.FFmpegError, ValueError) as e:  # e.g. a muxer refusing the joined timestamps
            log.warning("stream copy into %s failed (%s); re-encoding", dst, e)
    else:
        log.info("clips differ in encoding; re-encoding them into %s", dst)
    sizes = {probe(c).width for c in clips}, {probe(c).height for c in clips}
    if len(sizes[0]) > 1 or len(sizes[1]) > 1:
        raise VideogenError(f"clips have different frame sizes; cannot join them into {dst}")

    def frames() -> Iterator[np.ndarray]:
        for c in clips:
            for _, f in decode_all(c):
                yield f

    return write_mp4(frames(), dst, fps=fps, crf=crf)


def _vtt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_vtt(cues: Sequence[tuple[float, float, str]], dst: str | Path) -> Path:
    """Write WebVTT subtitles: one cue ``(start_s, end_s, text)`` per step (text on one or more lines)."""
    lines = ["WEBVTT", ""]
    for i, (start, end, text) in enumerate(cues, start=1):
        # "-->" and blank lines would end a cue early
        body = "\n".join(ln for ln in text.replace("-->", "->").splitlines() if ln.strip()) or " "
        lines += [str(i), f"{_vtt_time(start)} --> {_vtt_time(end)}", body, ""]
    return atomic_write_text(dst, "\n".join(lines))


def parse_vtt(path: str | Path) -> list[tuple[float, float, str]]:
    """Read back the cues of a WebVTT file written by :func:`write_vtt` (for tests and the storyboard)."""

    def secs(t: str) -> float:
        h, m, s = t.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    cues = []
    blocks = Path(path).read_text(encoding="utf-8").split("\n\n")
    for block in blocks[1:]:
        rows = [r for r in block.splitlines() if r.strip()]
        timing = next((i for i, r in enumerate(rows) if "-->" in r), None)
        if timing is None:
            continue
        a, b = (x.strip() for x in rows[timing].split("-->"))
        cues.append((secs(a), secs(b), "\n".join(rows[timing + 1 :])))
    return cues
