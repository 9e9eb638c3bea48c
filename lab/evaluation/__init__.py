"""Selection quality: tasks, methods (GOT-D, DSIR, baselines), metrics, summaries and reports."""
