from numatp.cli.main import main

main()
