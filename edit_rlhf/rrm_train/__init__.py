"""Edit-RRM training: T+V trace selection, cold-start SFT and GCPO learner cores, weight sync, evaluation."""
