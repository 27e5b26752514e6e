from microbuild.cli.launcher import main

main()
