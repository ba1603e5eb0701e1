"""`python -m torch.distributed.run ... tests/dist_worker.py ARGS`: the `spikediff`
CLI as one rank of a torchrun job, for tests/test_distributed.py. With
SPIKEDIFF_TEST_DIE=RANK:STAGE:EPOCH, that rank vanishes (os._exit, no
clean-up) after its part of that epoch's checkpoint, as a killed process would."""
import os
import sys

from spikediff import distributed
from spikediff.cli import main
from spikediff.train import Trainer

die = os.environ.get("SPIKEDIFF_TEST_DIE")
if die:
    rank, stage, epoch = die.split(":")
    save = Trainer.save

    def save_then_die(self, opt):
        save(self, opt)
        if (distributed.rank(), self.state.stage, self.state.epoch) == (int(rank), stage,
                                                                         int(epoch)):
            os._exit(9)

    Trainer.save = save_then_die

sys.exit(main(sys.argv[1:]))
