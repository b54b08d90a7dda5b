"""The pack's stand-ins for labs 1-5: lab N is graded with these in place of the student's labs before it, so a
bug in an earlier lab costs points in that lab only. Each meets its lab's contract, through torch's fused operators
where torch has them; they run in the worker as the lab modules they stand in for (lab1_attention, ...), and the
worker trusts their code alone to call those operators. The judge compiles them and sends the code (judge/runner.py
`standin`): no file of theirs is ever written where a worker can read it. Lab 4's is held back from the student release (it is
plain code): where a stand-in is missing, the student's own file is used.
"""
