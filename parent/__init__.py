"""The parent: the command line's grading, submissions, supervision of the judges, verdicts, reports, batches."""
