"""The director's config (one dataclass tree; presets in ``director/presets/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from auteur.training import TrainLoop
from auteur.vision import VisionConfig
from director.backbone import BackboneConfig
from director.model import LossConfig, ModelConfig

PRESETS = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    """Training data: CookGen builds (top-level ``data=DIR[,DIR]``) and how they become samples."""

    captions_csv: str | None = None  # extra CookGen-style captions (a CSV with a `text` column)
    train_split: str = "train"
    val_split: str = "val"
    context_steps: int = 4  # steps per training window (the rolling context)
    stride: int = 2
    max_tokens: int = 1024
    max_val_samples: int = 64
    caption_lines: int = 0  # how many captions.csv lines join the training samples (0: none)
    visual_repeat: int = 1  # repeat the windows that carry visual states (few next to text-only recipes)
    # batch samples of similar length together (less padding; Hugging Face's group_by_length)
    group_by_length: bool = False
    # give steps without a keyframe embedding (text-only recipes such as YouCook2's) the image block that the
    # planner writes after every step, its <|vis|> slots filled with the mean training embedding, no visual loss:
    # without it the planner reads back, after step 1, a context that text-only training never showed
    fill_blocks: bool = True
    # also train each window that starts a recipe whose first step has an embedding once more with that step's
    # (caption, embedding) as the initial image-text pair after the prompt (``director plan --image``)
    initial_image: bool = False
    # leave out every recipe of the held-out dishes of director/eval/unseen_dishes.json (all splits), so that
    # `director eval --unseen` can score the checkpoint (its train_queries.json then shows none of them)
    exclude_unseen: bool = False
    # retrieval-augmented: after the query, the nearest *other* training dish's typical recipe
    # (director/neighbours.py); the checkpoint keeps the recipes (neighbours.json), `director plan` shows the same line
    neighbour_recipes: bool = False


@dataclass
class TrainConfig(TrainLoop):
    """The shared loop settings (:class:`auteur.training.TrainLoop`) with the director's defaults: warm-up then a
    half cosine to zero; ``batch_size`` windows per micro-batch over all processes."""

    lr: float = 2e-4
    warmup_steps: int = 10
    schedule: Literal["constant", "cosine"] = "cosine"
    max_steps: int = 200
    batch_size: int = 4
    save_every: int = 50
    eval_every: int = 50
    log_every: int = 10
    # start from a trained director (its adapter, queries, head, projector; same base model and visual space);
    # the optimizer and schedule start fresh
    init_from: str | None = None


@dataclass
class PlanConfig:
    max_steps: int = 12  # bound on the steps when the model decides the end
    max_action_tokens: int = 40
    max_caption_tokens: int = 96
    temperature: float = 0.0  # 0: greedy
    # CTRL-style penalty (transformers' RepetitionPenaltyLogitsProcessor) on the tokens of the earlier actions
    # (when sampling an action) or earlier captions (when sampling a caption); 1.0: off
    repetition_penalty: float = 1.0
    # the model ends the plan when P(Done) / (P(Done) + P(Step)) at a step boundary reaches this (0.5: the likelier
    # of the two); greedy only, sampling draws between the two
    end_threshold: float = 0.5
    # the same for plans with captions (the context then holds captions, which few training recipes had)
    end_threshold_captions: float = 0.5
    captions: bool = True  # generate a caption for each step (False: actions and visual states only)
    # greedy decoding verifies up to this many tokens drafted from the context (prompt lookup) per forward;
    # the plan is the same as token-by-token decoding, only faster (0: off; sampling never drafts)
    lookup_tokens: int = 0
    # fold the LoRA weights into the base weights before planning (W + alpha/r B A, as peft's ``merge_adapter``;
    # `director plan` adds it into new tensors without wrapping the LM in peft, ~1 s sooner): one matrix per layer
    # instead of three, the same function up to float rounding; the director is then for inference only
    merge_lora: bool = False
    # the tokens a plan's text may use: "full" (the whole vocabulary) or "trained" (the token ids of the
    # checkpoint's training labels, its output_vocab.json, plus the tokens of the query and of kept steps).
    # "trained" projects onto those rows of the output matrix only: fewer bytes read per token
    output_vocab: Literal["full", "trained"] = "full"
    # every word of a plan is an English word (director/words.py: the lexicon + the query's words): a token that
    # would finish a non-word, or start one no word begins with, is passed over for the next likeliest
    word_check: bool = True
    # no text field starts with a number (training text never does; a caption forced after an action otherwise
    # can come out as "5. A close-up ...")
    ban_leading_numbers: bool = True
    # a step whose action repeats an earlier action verbatim is planned again with that action's first token
    # banned (up to this many times); when the model decides the length and it still repeats, the plan ends there
    retry_repeated_actions: int = 3
    # `director plan` notes (stderr) when the query's all-MiniLM-L6-v2 cosine similarity to the nearest of the
    # checkpoint's training queries (train_queries.json) is below this: the director knows what it was trained on
    # (0: never). 0.40: below every cooking query of director/eval/free_form_queries.txt (lowest 0.451, sourdough
    # bread) and every training query's nearest other (lowest 0.420); above 19 of 23 non-cooking queries
    # (docs/director.md)
    domain_note_below: float = 0.40


@dataclass
class DirectorConfig:
    """Everything that makes a director run or plan (saved as config.yaml in every output folder)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)  # the visual space when the data has none
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dataset: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    checkpoint: str | None = None  # a trained director (folder with director.json); none: untrained (tiny tests)
    data: list[str] = field(default_factory=list)  # CookGen build folders to train on
    out: str = ""  # run folder for `director train`
    resume: Literal["auto", "never"] = "auto"
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
