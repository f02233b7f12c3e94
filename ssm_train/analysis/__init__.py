"""The paper's results as computations: spectra, Vandermonde conditioning, reconstruction, training.

    spectra.py         the compared spectra λ_1..λ_N, drawn with ssm_train.nn.init
    vandermonde.py     κ(V) of V[i, j] = λ_i^j
    reconstruction.py  least-squares recovery of the inputs from the state; the memory curve
    trained.py         linear recurrence + MLP trained with ssm_train.run.fit, real vs complex

``ssm_train.reproduce`` (``ssm-train reproduce NAME``) turns each into JSON, a figure and a report
section. Only trained.py touches Lightning (through ``fit``).
"""
