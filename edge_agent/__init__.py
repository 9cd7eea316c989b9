"""Few-shot visual inspection on an edge camera: embed frames with a TFLite model, judge them, publish verdicts.

Data flow, one folder per role: ``capture`` -> ``embed`` -> ``learn`` (detector, threshold) -> verdict ->
``deliver`` (sinks: MQTT, stdout, ...); ``agent`` runs that loop, ``cli`` is the entry point, ``offline`` holds
the evaluation and the demo. docs/architecture.md describes the threads, the seams and the contracts.
"""

__version__ = "0.1.0"
