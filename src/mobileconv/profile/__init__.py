"""Parameter, MAC and activation-memory accounting of any ``nn.Module``, per layer.

``summarize(model, input_size=(3, 224, 224))`` counts in the papers' convention (SPEC.md:
MACs = multiply-adds of convs and linear layers, batch 1), with MixConv / XSepConv counted
as the papers define them. See :mod:`mobileconv.profile.summary` for the definitions.
"""
from .describe import describe  # noqa: F401
from .macs import MacCounter  # noqa: F401
from .report import human, plot_top1_vs_macs, summary_csv, summary_table  # noqa: F401
from .summary import LayerSummary, ModelSummary, summarize  # noqa: F401
from .zoo import profile_models, summarize_registered  # noqa: F401
