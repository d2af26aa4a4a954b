"""One run as steps: plan, stage, diff and guard, deliver, outcome; the progress protocol."""
