"""How good a run is and what is wrong: label issues, comparison, estimates, advice."""
