"""The renderer: keyframes for a plan, with a rolling 1–3-frame context (VideoAuteur §4.2, §5.2).

Two back-ends behind one ``renderer render`` command:

- ``flux`` (presets ``tiny`` and ``paper``): diffusers' ``FluxFillPipeline`` on a canvas tiling the last k
  keyframes and the panel to generate, a tiled caption prompt, and the director's visual embedding injected as
  extra T5-space tokens through an embedding adapter (:mod:`renderer.flux`, :mod:`renderer.adapter`);
  ``renderer train`` fits LoRA + adapter with the flow-matching loss (:mod:`renderer.train`).
- ``retrieval`` (preset ``default``, the offline default; no FLUX weights exist offline): the nearest real frame
  of a frame bank in the plan's visual space, with a consistency term towards the previous chosen frames
  (:mod:`renderer.retrieval`; banks are built by ``cookgen bank``, format :mod:`auteur.bank`). Plans record that
  their keyframes were retrieved.
"""

from renderer.errors import RendererError

__all__ = ["RendererError"]
