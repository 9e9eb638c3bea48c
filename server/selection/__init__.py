"""Selection: modes (exact, global, paper), configuration, k-means summaries, costs, sketches, top-k."""
