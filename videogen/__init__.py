"""``videogen``: clips conditioned on the director's visual embeddings, and one long narrative video.

VideoAuteur (Xiao et al., 2025, arXiv:2501.06173) §4.3: a video model conditioned on the director's visual
embeddings, fine-tuned to tolerate imperfect embeddings with ``z' = S(M(z + eps))`` (noise, masking,
shuffling; Table 7). Backends: ``wan`` (a diffusers Wan 2.1 image-to-video pipeline fed with projected
embeddings as its ``image_embeds``) and ``animatic`` (the offline default: the keyframes held with a slow
pan/zoom and crossfades, labelled as an animatic, since no video weights exist offline).
"""

from videogen.errors import VideogenError

__all__ = ["VideogenError"]
