"""Concept diagrams, drawn with matplotlib so that they render as ordinary figure outputs everywhere.

``accel.book.diagrams.draw`` holds the primitives (boxes, arrows, labels on a blank canvas); each chapter's diagram
lives in its own module here (``where_time_goes``, ``infobatch``, ``echo``, ``cowclip``, ``moe``) as one function
that returns the figure.
"""
