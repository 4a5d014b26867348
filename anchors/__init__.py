"""StoryAnchors-style bidirectional story-frame generation (Wang et al., 2025); see the README section "anchors"."""
