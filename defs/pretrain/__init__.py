"""The pretrain domain."""
