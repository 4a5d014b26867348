"""auteur: what every stage of the VideoAuteur pipeline shares.

The ``Plan``/``Step`` schema and its files (:mod:`auteur.plan`), dataclass configs with presets and dotted
overrides (:mod:`auteur.config`), run folders and atomic writes (:mod:`auteur.io`), visual encoders
(:mod:`auteur.vision`), video I/O (:mod:`auteur.video`) and the frame-bank format (:mod:`auteur.bank`, built by
``cookgen bank``, read by the retrieval renderer). Stage packages (cookgen, director, renderer,
videogen, anchors) import this package and never each other.
"""

from auteur.errors import AuteurError

__version__ = "0.1.0"
__all__ = ["AuteurError", "__version__"]
