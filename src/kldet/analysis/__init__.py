"""Analysis of the method without training (:mod:`kldet.analysis.assignment`: positives per ground truth
by object size, per assigner).

It reads the data package (size bins, synthetic scenes) and draws with matplotlib, so it lives outside
:mod:`kldet.assign`, which imports neither.
"""
