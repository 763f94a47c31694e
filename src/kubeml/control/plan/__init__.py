"""The sample plan: 64-sample chunks, each epoch's order, where every function stands. No I/O."""
