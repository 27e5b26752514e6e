from microbuild.cli.main import main

main()
