"""Analysis of the method without training (:mod:`kldet.analysis.assignment`: positives per ground truth
by object size, per assigner) and of a detector's errors (:mod:`kldet.analysis.diagnostics`: PR curves,
confusion matrix, TIDE breakdown by size bin; :mod:`kldet.analysis.report`: the files of kldet-eval plots=).

It reads the data package (size bins, synthetic scenes) and draws with matplotlib, so it lives outside
:mod:`kldet.assign`, which imports neither.
"""
