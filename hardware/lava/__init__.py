"""Run spikediff's NIR graphs on Lava (Loihi simulation) in a separate Python 3.10 process.

``mapping`` turns a NIR graph into Lava processes, ``worker`` serves requests in
the Lava environment, ``client`` (main environment, no Lava import) talks to it.
"""
