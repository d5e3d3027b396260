"""The t3s benchmark suite (`make bench`): what T3S costs over plain SFT and how fast the tooling is."""
