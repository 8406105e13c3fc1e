"""Networks and pure tensor math of CMDR-IAD (no IO): mapping MLPs, decoders, loss, fusion."""
