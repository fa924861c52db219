"""`worker redrive`: native move tasks and app mode, with their options, plan and report."""
