"""The worker side of grading: the only code that imports and runs a student's lab files.

It imports nothing from judge/, checkers/ or parent/ (a test walks the imports): what it knows is how to run what a
judge asks for and how to send back plain data (protocol/). It decides nothing.
"""
