"""StoryAnchors-style bidirectional story-frame generation (Wang et al., 2025); see docs/readme/anchors.md."""
