"""The parameter server: averaging maths, the outer step, and the threads that merge a round."""
