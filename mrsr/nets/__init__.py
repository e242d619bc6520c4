"""Pure ``nn.Module`` networks (no training logic)."""
