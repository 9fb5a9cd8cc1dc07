"""Reading a number out of an answer, and the statistics of accuracies."""
